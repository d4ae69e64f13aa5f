import re,subprocess,os
OUT='/work/research/bounce-eval/labels'
def git(g,*a): return subprocess.run(['git','--git-dir='+g]+list(a),capture_output=True,text=True).stdout
M='/work/.mirror'
def w(slug,rows):
    with open(f'{OUT}/{slug}.tsv','w') as f:
        f.write('file\tsource_label\trecipient\n')
        for r in rows: f.write('\t'.join(x.replace('\t',' ').replace('\n',' ') for x in r)+'\n')
    print(slug,len(rows))
# flufl
src=git(M+'/wRAR+flufl.bounce/repo/.git','show','HEAD:flufl/bounce/_detectors/tests/detectors.py')
data=src[src.index('DATA = ('):]
rows=[]
for m in re.finditer(r"\('(\w+)',\s*'([\w.]+)',\s*\[([^\]]*)\](,\s*True)?\)",data,re.S):
    mod,fn,addrs,temp=m.groups()
    addrs=re.findall(r"b'([^']+)'",addrs)
    cls='temporary' if temp else 'permanent'
    lab=f"flufl detector={mod}; {cls} failure" if addrs else f"flufl detector={mod}; no address expected"
    rows.append((fn.replace('.txt','.eml'),lab,', '.join(addrs)))
rows.append(('simple_01.eml','flufl scan_message (all detectors) -> permanent','bbbsss@turbosport.com'))
rows.append(('postfix_01.eml','flufl SMTP32 detector must find nothing (negative for that detector only)',''))
w('flufl-bounce',rows)
# BounceParser
R=[]
uu={}
t=git(M+'/rjbs+Mail-DeliveryStatus-BounceParser/repo','show','HEAD:t/various-unknown.t')
for m in re.finditer(r'"([\w.-]+\.msg)"\s*=>\s*\{(.*?)\n    \},',t,re.S):
    fn,body=m.groups()
    sr=re.search(r"std_reason\s*=>\s*'(\w+)'",body); sc=re.search(r'"smtp_code"\s*=>\s*"?(\d*)',body)
    R.append((fn,f"is_bounce=1; std_reason={sr.group(1) if sr else 'user_unknown'}; smtp_code={sc.group(1) if sc else ''}",'recipient@example.net'))
for fn,sc,rc in [('sendmail-host-unknown.msg','550','recipient@#example.net'),('postfix-host-unknown.msg','500','bounce@dest.example.com'),('no-such-domain.msg','550','recipient@example.net')]:
    R.append((fn,f'is_bounce=1; std_reason=domain_error; smtp_code={sc}',rc))
corpus=git(M+'/rjbs+Mail-DeliveryStatus-BounceParser/repo','ls-tree','--name-only','HEAD','t/corpus/').split()
corpus=[os.path.basename(c) for c in corpus]
for c in corpus:
    if c.startswith('quota'): R.append((c,'is_bounce=1; std_reason=over_quota'+(' (TODO/not enforced in test)' if 'quota-5' in c else ''),''))
    if c.startswith('spam-rejection') and c!='spam-rejection-uribl.msg': R.append((c,'is_bounce=1; std_reason=spam',''))
    if c.startswith('message-too-large'): R.append((c,"is_bounce=1; intended std_reason=message_too_large (test key misspelled 'std_reaons', so not enforced)",''))
R+= [('spam-rejection-uribl.msg','is_bounce=1; std_reason=spam',''),('spamassassin.msg','is_bounce=1; std_reason=spam',''),('spambouncer.msg','is_bounce=1; std_reason=spam',''),('junkemailfilter.msg','is_bounce=1; std_reason=spam',''),
 ('malformed-dns.msg','is_bounce=1; std_reason=domain_error; status=5.4.4',''),('not-a-relay.msg','is_bounce=1; std_reason=domain_error',''),('rcpthosts.msg','is_bounce=1; std_reason=domain_error',''),('relaying-denied.msg','is_bounce=1; std_reason=domain_error',''),
 ('postfix-malformed.msg','is_bounce=1; std_reason=domain_error','exampleuser@yyahoo.com'),
 ('user-unknown-disabled.msg','is_bounce=1; std_reason=user_disabled',''),('polish-unknown.msg','is_bounce=1; std_reason=user_disabled',''),
 ('aol.attachment.msg','is_bounce=1 (recipient not accepting attachments)','exampleuser@aol.com'),('aol-senderblock.msg','is_bounce=1 (AOL sender block)','mykewlaolacct@aol.com'),
 ('iis-multiple-bounce.msg','is_bounce=1','bounced1@example.net, bounced2@example.net, bounced3@example.net, bounced4@example.net'),
 ('no-message-collected.msg','is_bounce=1',''),('non-autoreply.msg','is_bounce=1',''),('postfix-smtp-550.msg','is_bounce=1; smtp_code=550',''),('surfcontrol-extra-newline.msg','is_bounce=1; smtp_code=554',''),
 ('postfix.msg','is_bounce=1','bounce@dest.example.com'),('postfix-orig.msg','bounce (original recipient / final recipient test)','original@dest.example.com (final: final@dest.example.com)'),
 ('aol.unknown.msg','is_bounce=1 (also in various-unknown)',''),
 ('warning-1.msg','is_bounce=1; std_reason=user_unknown',''),('warning-2.msg','is_bounce=1; std_reason=user_unknown',''),('warning-3.msg','is_bounce=1; std_reason=user_unknown',''),
 ('warning-4.msg','is_bounce=1; std_reason=over_quota',''),('warning-5.msg','is_bounce=1 (report missing; FIXME in test)',''),('warning-6.msg','is_bounce=0',''),
 ('warning-7.msg','is_bounce=1; std_reason=over_quota',''),('warning-8.msg','is_bounce=0 (test comment: transient nonfatal error)',''),('warning-9.msg','is_bounce=1',''),
 ('aol-vacation.msg','is_bounce=0 (vacation auto-reply)',''),('polish-autoreply.msg','is_bounce=0 (auto-reply)',''),('bluebottle.msg','is_bounce=0 (challenge/response)',''),
 ('boxbe-cr.msg','is_bounce=0 (challenge/response)',''),('boxbe-cr2.msg','is_bounce=0 (challenge/response)',''),('whitelist.msg','is_bounce=0',''),
 ('autoreply.msg','is_bounce=0 (TODO: test marked todo; intended non-bounce auto-reply)',''),
 ('misidentified-recipient.msg','is_bounce=1 (test comment: actually a non-bounce spam message)','john.b@b.c'),
 ('spam-bogus-email-in-report.msg','is_bounce=1, reports=0 (test comment: actually a non-bounce spam message)',''),
 ('spam-lots-of-bogus-addresses.msg','is_bounce=1, reports=0 (test comment: actually a non-bounce spam message)',''),
 ('spam-with-image.msg','is_bounce=1, reports=0 (binary image spam)',''),
 ('virus-caused-multiple-weird-reports.msg','is_bounce=1, reports=0 (xt/ test comment: actually a non-bounce virus message)','')]
R=[(a.replace('.msg','.eml'),b,c) for a,b,c in R]
w('mail-deliverystatus-bounceparser',R)
# livebg bounce_email + voku BMH
L=[('tt_bounce_01.eml','bounce_email: code=5.1.2; type=hard',''),('tt_bounce_02.eml','bounce_email: code=5.1.2',''),
 ('tt_bounce_03.eml','bounce_email: code=5.0.0',''),('tt_bounce_04.eml','bounce_email: code=5.0.0',''),('tt_bounce_05.eml','bounce_email: code=5.0.0',''),
 ('tt_bounce_06.eml','bounce_email: code=5.7.1 (RBL/DNSBL)',''),('tt_bounce_07.eml','bounce_email: code=5.0.0 (test comment: body actually says 5.1.1 User unknown)',''),
 ('tt_bounce_08.eml','bounce_email: code=5.3.2',''),('tt_bounce_09.eml','bounce_email: code=5.3.2',''),('tt_bounce_10.eml','bounce_email: code=4.0.0; type=soft',''),
 ('malformed_bounce_01.eml','bounce_email: code=5.1.1',''),('unknown_code_bounce_01.eml','bounce_email: bounced; code=unknown; type=hard; reason=unknown',''),
 ('tt_bounce_24.eml','bounce_email: bounced; type=hard (Exchange multipart)','')]
g=M+'/livebg+bounce_email/repo'
for p in git(g,'ls-tree','--name-only','HEAD','test/bounces/').split(): L.append((os.path.basename(p).rsplit('.',1)[0]+'.eml','bounce_email: bounced? = true (test_all_bounces)',''))
for p in git(g,'ls-tree','--name-only','HEAD','test/non_bounces/').split(): L.append((os.path.basename(p).rsplit('.',1)[0]+'.eml','bounce_email: bounced? = false (test_all_non_bounces)',''))
s=git(M+'/voku+PHPMailer-BMH/repo','show','HEAD:tests/SingleMessageTest.php')
body=s[s.index('$testData'):]; body=re.sub(r'/\*.*?\*/','',body,flags=re.S)
for m in re.finditer(r"'bounce-email/([^']+)\.txt'\s*=>\s*\[(.*?)\]",body,re.S):
    v=[x.strip().strip("'") for x in m.group(2).split(',') if x.strip()]
    L.append((m.group(1)+'.eml',f"voku/PHPMailer-BMH SingleMessageTest: rule={v[5]}; ruleCat={v[6]}; bounceType={v[7]}",v[8]))
w('livebg-bounce-email',L)
# cfortune + zoonru labels (zoonru tests)
w('cfortune-php-bounce-handler',[('1.eml','zoonru/PHP-Bounce-Handler test: bounce; action=failed; status=5.1.1; reason=UserUnknown','somat@ciudad.com.ar'),
 ('46.eml','zoonru/PHP-Bounce-Handler test: bounce; action=transient; status=4.2.0; reason=NotAccept','geoffrey@gels.biz'),
 ('5.1.1.eml','zoonru/PHP-Bounce-Handler test: bounce; action=failed; status=5.1.1; reason=UserUnknown','someuser@somedomain.com'),
 ('arf3.eml','zoonru/PHP-Bounce-Handler test: FBL (abuse feedback report), not a bounce','user@example.com')])
w('zoonru-php-bounce-handler',[('fixture_bounce_001.eml','zoonru test: bounce; action=failed; status=5.7.1; reason=UserUnknown','recipient.one@example.test')])
w('mailgun-flanker',[('zed.eml','flanker bounce.detect: is_bounce=True; status=5.1.1','asdfasdfasdfasdfasdfasdfewrqertrtyrthsfgdfgadfqeadvxzvz@gmail.com'),
 ('office365.eml','flanker bounce.detect: is_bounce=True; status=5.1.10 (RESOLVER.ADR.RecipientNotFound)','noname@example.com')])
w('tmail-bouncer',[('yahoo.eml','tmail_bouncer: StandardBouncer; status=Failure','fred@somewhere.com'),('aol.eml','tmail_bouncer: StandardBouncer; status=Failure','fred@aol.com'),
 ('verizon.eml','tmail_bouncer: StandardBouncer; status=Failure','fred@somewhere.com'),('box_full.eml','tmail_bouncer: BoxFullBouncer; status=Failure','fred@example.com'),
 ('out_of_office.eml','tmail_bouncer: OutOfOfficeBouncer (auto-reply; library reports status=Failure)','fred@example.com'),
 ('yahoo_legit.eml','tmail_bouncer: NoBouncer; status=Success (not a bounce)',''),('legit_with_quota.eml','tmail_bouncer: NoBouncer (not a bounce, mentions quota)',''),('legit_multipart.eml','tmail_bouncer: NoBouncer (not a bounce)','')])
nb=[]
for p in git(M+'/ardiesaeidi+node-baunsu/repo','ls-tree','--name-only','HEAD','tests/emails/').split():
    b=os.path.basename(p)[:-4]
    if b.startswith('bounce'): nb.append((b+'.eml','node-baunsu hardBounceTest: bounced=true; isHard=true; isSoft=false',''))
    elif b.startswith('auto'): nb.append((b+'.eml','node-baunsu autoResponseTest: bounced=false (auto-response)',''))
    elif b.startswith('ordinary'): nb.append((b+'.eml','node-baunsu ordinaryEmailTest: bounced=false',''))
w('node-baunsu',nb)
