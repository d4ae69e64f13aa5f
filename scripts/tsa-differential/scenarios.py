"""The scenarios the differential harness plays into KumoMTA's tsa-daemon and into Vigil.

Each scenario is a list of KumoMTA log records, each with an offset in seconds from the
moment the scenario starts (T0), and the shaping files both sides load. Times in records and
answers are written as offsets from T0, so a golden answer recorded once compares with Vigil
at any time. Offsets are whole seconds (the daemon counts threshold windows in seconds).

`python3 scenarios.py` writes testdata/tsa-differential/scenarios/*.json (the records the
test feeds Vigil; harness.py feeds the same files to the daemon).
"""
import hashlib
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(REPO, "testdata/tsa-differential")

SHIPPED = "processor/data/rules/kumomta_shipped_shaping.toml"
COMMUNITY = "processor/data/rules/kumomta_community_shaping.toml"
ACTIONS = "testdata/kumomta/shaping/integration_tests_shaping.toml"
KUMO = [SHIPPED, COMMUNITY]


def own(name):
    return f"testdata/tsa-differential/shaping/{name}.toml"


# MX data both sides use: the daemon resolves it through its test resolver; the records
# carry the site names kumod builds from it.
ZONES = {
    "yahoo.com": ["mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net", "mta7.am0.yahoodns.net"],
    "aol.com": ["mx-aol.mail.gm0.yahoodns.net"],
    "outlook.com": ["outlook-com.olc.protection.outlook.com"],
    "hotmail.com": ["hotmail-com.olc.protection.outlook.com"],
    "gmail.com": ["gmail-smtp-in.l.google.com"],
    "comcast.net": ["mx1a1.comcast.net"],
    "example.com": ["mx.example.com"],
    "example.net": ["mx.example.com"],
    "example.org": ["mx.example.org"],
    "web.de": ["mx-ha03.web.de"],
    "icloud.com": ["mx01.mail.icloud.com"],
    "orange.fr": ["smtp-in.orange.fr"],
    "mimecast-customer.example": ["us-smtp-inbound-1.mimecast.com"],
    "qq.com": ["mx3.qq.com"],
    "163.com": ["163mx01.mxmail.netease.com"],
    "yahoo.co.jp": ["mx1.mail.yahoo.co.jp"],
}
SITES = {
    "yahoo.com": "(mta5|mta6|mta7).am0.yahoodns.net",
    "aol.com": "mx-aol.mail.gm0.yahoodns.net",
    "outlook.com": "outlook-com.olc.protection.outlook.com",
    "hotmail.com": "hotmail-com.olc.protection.outlook.com",
    "gmail.com": "gmail-smtp-in.l.google.com",
    "comcast.net": "mx1a1.comcast.net",
    "example.com": "mx.example.com",
    "example.net": "mx.example.com",
    "example.org": "mx.example.org",
    "web.de": "mx-ha03.web.de",
    "icloud.com": "mx01.mail.icloud.com",
    "orange.fr": "smtp-in.orange.fr",
    "mimecast-customer.example": "us-smtp-inbound-1.mimecast.com",
    "qq.com": "mx3.qq.com",
    "163.com": "163mx01.mxmail.netease.com",
    "yahoo.co.jp": "mx1.mail.yahoo.co.jp",
}

TSS04 = (421, (4, 7, 0), "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user "
         "complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes")
OUTLOOK_BUSY = (451, (4, 7, 500), "Server busy. Please try again later from [192.0.2.2]. (S77719) "
                "[AM4PEPF00027A6C.eurprd04.prod.outlook.com]")
GMAIL_RATE = (421, (4, 7, 28), "Our system has detected an unusual rate of unsolicited mail originating from your "
              "IP address. To protect our users from spam, mail sent from your IP address has been temporarily "
              "rate limited. gsmtp")
IP_DEFERRED = (421, (4, 7, 0), "Messages from 192.0.2.3 temporarily deferred due to user complaints")
COMCAST_RL = (421, None, "RL0000 rate limited, try again later")
COMCAST_RL10 = (421, None, "RL000010 too many connections")
OK = (250, (2, 0, 0), "OK queued")


def record(offset, domain, response, source="ip-1", kind="TransientFailure", local="user", queue=None,
           site=None, n=0):
    code, enhanced, content = response
    recipient = f"{local}{n}@{domain}"
    return {
        "offset": offset,
        "record": {
            "type": kind,
            "id": hashlib.sha256(repr((offset, domain, source, kind, local, n, content)).encode()).hexdigest()[:32],
            "sender": "bounce@sender.example",
            "recipient": recipient,
            "queue": queue if queue is not None else domain,
            "site": site if site is not None else f"{source}->{SITES[domain]}@smtp_client",
            "size": 1024,
            "response": {
                "code": code,
                "enhanced_code": None if enhanced is None else dict(zip(("class", "subject", "detail"), enhanced)),
                "content": content,
                "command": "." if kind == "Delivery" else "MAIL FROM:<bounce@sender.example>",
            },
            "peer_address": {"name": ZONES.get(domain, ["mx." + domain])[0], "addr": "198.51.100.7"},
            "timestamp": 0,
            "created": 0,
            "num_attempts": 1,
            "bounce_classification": "Uncategorized",
            "egress_pool": "pool-1",
            "egress_source": source,
            "source_address": {"address": "192.0.2.1:0"},
            "feedback_report": None,
            "meta": {},
            "headers": {},
            "delivery_protocol": "ESMTP",
            "reception_protocol": None,
            "nodeid": "00000000-0000-0000-0000-000000000001",
        },
    }


def text(content):
    return (450, (4, 0, 0), content)


def many(count, start, step, **kw):
    return [record(start + i * step, n=i, **kw) for i in range(count)]


S = {}


def scenario(name, files, records, about):
    S[name] = {"name": name, "about": about, "shaping_files": files, "zones": ZONES, "records": records}


# --- KumoMTA's shipped and community files --------------------------------------------------
scenario("yahoo-tss04-once", KUMO, [record(0, "yahoo.com", TSS04)],
         "one TSS04: the shipped Immediate Suspend and the default rule's SetConfig")
scenario("yahoo-tss04-twice", KUMO, many(2, 0, 60, domain="yahoo.com", response=TSS04),
         "two TSS04: the community 2/hr threshold fires on the second")
scenario("yahoo-tss04-repeats-extend", KUMO,
         [record(0, "yahoo.com", TSS04), record(192, "yahoo.com", TSS04, n=1), record(384, "yahoo.com", TSS04, n=2)],
         "three TSS04 over six minutes: every expiry moves to the last match + duration")
scenario("yahoo-two-sources", KUMO,
         many(2, 0, 30, domain="yahoo.com", response=TSS04, source="ip-1")
         + many(1, 10, 30, domain="yahoo.com", response=TSS04, source="ip-2"),
         "two sources: ip-1 reaches the threshold, ip-2 only the Immediate rule")
scenario("aol-rolls-up-to-yahoo", KUMO, [record(0, "aol.com", TSS04)],
         "AOL's MX is Yahoo's: the yahoo provider rules apply")
scenario("outlook-busy-2", KUMO, many(2, 0, 20, domain="outlook.com", response=OUTLOOK_BUSY),
         "two Server busy: below the community 5/hr")
scenario("outlook-busy-3", KUMO, many(3, 0, 20, domain="outlook.com", response=OUTLOOK_BUSY),
         "three Server busy: the 3/hr SetConfig (mx_rollup false), not the 5/hr Suspend")
scenario("outlook-busy-5", KUMO, many(5, 0, 20, domain="outlook.com", response=OUTLOOK_BUSY),
         "five Server busy: the 5/hr Suspend too; overlay mx_rollup of outlook.com")
scenario("outlook-busy-6", KUMO, many(6, 0, 20, domain="outlook.com", response=OUTLOOK_BUSY),
         "six: above the threshold, the sixth extends")
scenario("hotmail-busy-5", KUMO, many(5, 0, 20, domain="hotmail.com", response=OUTLOOK_BUSY),
         "hotmail.com on its own MX site")
scenario("outlook-three-sources", KUMO,
         many(5, 0, 10, domain="outlook.com", response=OUTLOOK_BUSY, source="ip-1")
         + many(3, 1, 10, domain="outlook.com", response=OUTLOOK_BUSY, source="ip-2")
         + many(1, 2, 10, domain="outlook.com", response=OUTLOOK_BUSY, source="ip-3"),
         "three sources at different volumes")
scenario("gmail-rate-limited", KUMO, many(3, 0, 30, domain="gmail.com", response=GMAIL_RATE),
         "Gmail's unsolicited-rate deferral")
scenario("default-ip-deferred", KUMO, [record(0, "example.org", IP_DEFERRED)],
         "the default rule on a domain no provider claims")
scenario("comcast-rl0000-1", KUMO, [record(0, "comcast.net", COMCAST_RL)],
         "comcast RL0000 once: below its 2/hr threshold")
scenario("comcast-rl0000-2", KUMO, many(2, 0, 60, domain="comcast.net", response=COMCAST_RL),
         "comcast RL0000 twice: the rollup block's SetConfig")
scenario("comcast-rl000010-tenant", KUMO,
         [record(0, "comcast.net", COMCAST_RL10, queue="spring:acme@comcast.net")],
         "comcast RL000010: SuspendTenant for the queue's tenant")
scenario("comcast-rl000010-no-tenant", KUMO, [record(0, "comcast.net", COMCAST_RL10)],
         "SuspendTenant without a tenant: skipped")
scenario("deliveries-do-nothing", KUMO, many(3, 0, 10, domain="yahoo.com", response=OK, kind="Delivery"),
         "250s match no rule")
scenario("old-record-ignored", KUMO, [record(-3 * 3600, "yahoo.com", TSS04)],
         "a TSS04 three hours old: its effect is already over")
scenario("old-and-new", KUMO, [record(-90 * 60, "yahoo.com", TSS04), record(0, "yahoo.com", TSS04, n=1)],
         "one 90 minutes old (2 h rule still in force, 90 min rule over) and one now")
scenario("out-of-order", KUMO,
         [record(300, "yahoo.com", TSS04), record(0, "yahoo.com", TSS04, n=1), record(120, "yahoo.com", TSS04, n=2)],
         "records arriving out of order")
scenario("internal-skipped", KUMO,
         [record(0, "yahoo.com", (451, (4, 4, 4), "KumoMTA internal: [TSS04] Messages from 192.0.2.1 temporarily "
                                  "deferred due to unexpected volume or user complaints"))],
         "an internal response is not matched")
scenario("yahoo-and-outlook", KUMO,
         many(3, 0, 10, domain="yahoo.com", response=TSS04) + many(5, 1, 10, domain="outlook.com",
                                                                      response=OUTLOOK_BUSY, source="ip-2"),
         "the tsa-daemon README demo")

# --- every action type (KumoMTA's integration-test shaping file) ------------------------------
for phrase, queue in [("450-go-away", None), ("450-suspend-campaign", "spring:acme@example.com"),
                      ("450-suspend-tenant", "spring:acme@example.com"), ("550-go-away", None),
                      ("550-go-away", "spring:acme@example.com"), ("550-bounce-campaign", "spring:acme@example.com"),
                      ("550-bounce-tenant", "spring:acme@example.com"), ("450-suspend-tenant", None),
                      ("550-bounce-campaign", "acme@example.com")]:
    suffix = "tenant" if queue and ":" not in queue else ("queue" if queue else "plain")
    scenario(f"action-{phrase}-{suffix}", [ACTIONS], [record(0, "example.com", text(f"you said {phrase}"), queue=queue)],
             f"`you said {phrase}` with queue {queue or 'example.com'}")
scenario("action-repeat-suspend", [ACTIONS],
         [record(0, "example.com", text("you said 450-go-away")),
          record(600, "example.com", text("you said 450-go-away"), n=1)],
         "Suspend and two SetConfigs, repeated ten minutes later")
scenario("action-two-domains-one-site", [ACTIONS],
         [record(0, "example.com", text("you said 450-go-away")),
          record(30, "example.net", text("you said 450-go-away"), n=1)],
         "two domains behind one MX site: one ready queue, the overlay follows the latest domain")
scenario("action-sink-no-rollup", [ACTIONS],
         [record(0, "example.org", text("OK ids=1"), kind="Delivery",
                 site="ip-1->mx.example.org@smtp_client")],
         "a block with mx_rollup = false only matches its own domain")

# --- triggers, rollups and internal matching (own files) ----------------------------------
scenario("threshold-below", [own("threshold")], many(2, 0, 60, domain="example.com", response=text("RL9999 slow")),
         "2 of a 3/hr threshold")
scenario("threshold-at", [own("threshold")], many(3, 0, 60, domain="example.com", response=text("RL9999 slow")),
         "3 of 3: fires")
scenario("threshold-above", [own("threshold")], many(5, 0, 60, domain="example.com", response=text("RL9999 slow")),
         "5 of 3: fires, then extends")
scenario("threshold-window-is-duration", [own("threshold")],
         [record(-40 * 60, "example.com", text("RL9999 slow")), record(-35 * 60, "example.com", text("RL9999 slow"), n=1),
          record(0, "example.com", text("RL9999 slow"), n=2)],
         "the window is the rule's duration (30 min), not the hour of 3/hr")
scenario("threshold-per-path", [own("threshold")],
         many(2, 0, 30, domain="example.com", response=text("RL9999 slow"), source="ip-1")
         + many(2, 5, 30, domain="example.com", response=text("RL9999 slow"), source="ip-2"),
         "counts are per egress path: 2 + 2 never reach 3")
scenario("two-rules-one-site", [own("two_rules")], [record(0, "example.com", text("RL9999 slow and BLOCKED"))],
         "two rules of one block match one response")
scenario("two-rules-threshold-and-immediate", [own("two_rules")],
         many(3, 0, 20, domain="example.com", response=text("RL9999 slow")),
         "an Immediate and a Threshold rule on one site")
scenario("set-domain-config", [own("domain_config")], [record(0, "example.com", text("TOO FAST"))],
         "SetDomainConfig: mx_rollup false in the overlay")
scenario("set-config-rollup", [own("domain_config")], [record(0, "example.com", text("SLOW DOWN"))],
         "SetConfig from a rollup block: mx_rollup true")
scenario("set-config-both", [own("domain_config")],
         [record(0, "example.com", text("SLOW DOWN")), record(5, "example.com", text("TOO FAST"), n=1)],
         "both on one domain: which mx_rollup the overlay prints")
scenario("rollup-two-domains", [own("domain_config")],
         [record(0, "example.net", text("SLOW DOWN"))],
         "example.net shares example.com's MX: the example.com rollup block matches it")
scenario("match-internal", [own("internal")],
         [record(0, "example.com", (451, (4, 4, 4), "KumoMTA internal: ready queue full"))],
         "match_internal = true matches an internal response")
scenario("match-internal-default", [own("internal")],
         [record(0, "example.com", (451, (4, 4, 4), "KumoMTA internal: no route"))],
         "without match_internal an internal response does not match")
scenario("expiration-record", [own("internal")],
         [record(0, "example.com", (551, (5, 4, 7), "Next delivery time would be at 2026-01-01 which exceeds the "
                                  "expiry time"), kind="Expiration")],
         "an Expiration record is matched like any other")
scenario("provider-scope", [own("provider")], [record(0, "example.com", text("PROVIDER SAYS NO"))],
         "a provider rule matched by MX suffix")


# --- every rule of the shipped and community files that tsa-daemon can fire ---------------------
# One scenario per rule: as many matching responses as its threshold asks, a minute apart, at
# a domain of its provider or block. Left out: the community `gmail` rules (no provider `match`
# for `gmail` in either file: they never fire in tsa-daemon), the `netvigator`, `barracuda` and
# `kpn` providers (MX suffixes written with a trailing dot never match in tsa-daemon), and
# Apple's `\\[HCM1\\]` (its regex asks for a literal backslash).
RULE_DOMAINS = {"yahoo": "yahoo.com", "gmx.net_web.de": "web.de", "outlook": "outlook.com", "apple": "icloud.com",
                "orange": "orange.fr", "mimecast": "mimecast-customer.example", "qq.com": "qq.com",
                "163.com": "163.com", "yahoo.co.jp": "yahoo.co.jp", "default": "example.org",
                "comcast.net": "comcast.net"}


def example(regex):
    """A response matching `regex` (the plain phrases these files use), as (code, enhanced, text)."""
    import re
    text = regex.replace("^(?!.*KumoMTA internal).*", "").replace(".*", " x ").replace("\\d+", "1")
    text = text.replace("\\.", ".").replace("\\[", "[").replace("\\]", "]").replace("?", "").rstrip("*")
    m = re.match(r"(\d{3}) (?:(\d)\.(\d+)\.(\d+) )?(.*)", text)
    if m:
        enhanced = None if m.group(2) is None else (int(m.group(2)), int(m.group(3)), int(m.group(4)))
        return (int(m.group(1)), enhanced, m.group(5) + " and more")
    return (451, (4, 7, 1), "please note: " + text + " today")


def rule_scenarios():
    import tomllib
    for path in KUMO:
        data = tomllib.load(open(os.path.join(REPO, path), "rb"))
        blocks = [(f"provider.{p}", p, b) for p, b in data.get("provider", {}).items()]
        blocks += [(k, k, v) for k, v in data.items() if k != "provider" and isinstance(v, dict)]
        for scope, name, block in blocks:
            for index, rule in enumerate(block.get("automation", [])):
                if name not in RULE_DOMAINS or "HCM1" in str(rule["regex"]):
                    continue
                regexes = rule["regex"] if isinstance(rule["regex"], list) else [rule["regex"]]
                trigger = rule.get("trigger", "Immediate")
                count = 1 if trigger == "Immediate" else int(trigger["Threshold"].split("/")[0])
                tag = "shipped" if path == SHIPPED else "community"
                for r, regex in enumerate(regexes):
                    queue = "news:acme@" + RULE_DOMAINS[name] if "Tenant" in str(rule["action"]) else None
                    scenario(f"rule-{tag}-{name}-{index}-{r}", KUMO,
                             many(count, 0, 60, domain=RULE_DOMAINS[name], response=example(regex), queue=queue),
                             f"{tag} {scope} rule {index} ({regex}), {count} response(s)")


rule_scenarios()


def main():
    os.makedirs(f"{OUT}/scenarios", exist_ok=True)
    for name, data in S.items():
        with open(f"{OUT}/scenarios/{name}.json", "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
    print(f"{len(S)} scenarios written to {OUT}/scenarios", file=sys.stderr)


if __name__ == "__main__":
    main()
