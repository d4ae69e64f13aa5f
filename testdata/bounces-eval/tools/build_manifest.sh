#!/bin/bash
# slug|gitdir|commit-ish|path-prefix-list|licence|licence-file
cd /work/research/bounce-eval
out=MANIFEST.tsv
printf 'local_file\tsource_repo\tcommit\toriginal_path\tgit_blob\tsha256\tlicence\n' > $out
add() { slug=$1; g=$2; rev=$3; lic=$4; shift 4
  commit=$(git --git-dir=$g rev-parse $rev^{commit})
  for p in "$@"; do
    git --git-dir=$g ls-tree -r $commit -- "$p" | while read mode type blob path; do
      b=$(basename "$path"); b=${b%.*}; local_f=emails/$slug/$b.eml
      [ -f "$local_f" ] || { echo "MISSING $local_f" >&2; continue; }
      # verify byte identity
      if git --git-dir=$g cat-file blob $blob | cmp -s - "$local_f"; then
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$local_f" "$REPO" "$commit" "$path" "$blob" "$(sha256sum < "$local_f" | cut -d' ' -f1)" "$lic" >> $out
      else echo "DIFF $local_f $path" >&2; fi
    done
  done
}
M=/work/.mirror
REPO=wRAR/flufl.bounce add flufl-bounce $M/wRAR+flufl.bounce/repo/.git HEAD LGPL-3.0-or-later flufl/bounce/tests/data
REPO=cfortune/PHP-Bounce-Handler add cfortune-php-bounce-handler $M/cfortune+PHP-Bounce-Handler/repo HEAD BSD-3-Clause eml
REPO=zoonru/PHP-Bounce-Handler add zoonru-php-bounce-handler $M/zoonru+PHP-Bounce-Handler/repo HEAD MIT eml/fixture_bounce_001.eml eml/fixture_bounce_002.eml eml/fixture_bounce_003.eml eml/fixture_bounce_004.eml eml/fixture_bounce_005.eml eml/fixture_bounce_006.eml eml/fixture_bounce_007.eml eml/fixture_bounce_008.eml eml/fixture_bounce_009.eml eml/fixture_feedback_001.eml eml/fixture_feedback_002.eml
REPO=rjbs/Mail-DeliveryStatus-BounceParser add mail-deliverystatus-bounceparser $M/rjbs+Mail-DeliveryStatus-BounceParser/repo HEAD 'Artistic-1.0-Perl OR GPL-1.0-or-later' t/corpus xt/corpus
REPO=mailgun/flanker add mailgun-flanker $M/mailgun+flanker/repo HEAD Apache-2.0 tests/fixtures/messages/bounce
REPO=mailgun/flanker add mailgun-flanker $M/mailgun+flanker/repo a3dfeb15c6f14714306e211c4101255e36947538 Apache-2.0 tests/fixtures/messages/bounce/gmail-spam-mail.eml
REPO=livebg/bounce_email add livebg-bounce-email $M/livebg+bounce_email/repo HEAD MIT test/bounces test/non_bounces
REPO=tangofoxtrot/tmail_bouncer add tmail-bouncer $M/tangofoxtrot+tmail_bouncer/repo HEAD MIT test/fixtures
REPO=ardiesaeidi/node-baunsu add node-baunsu $M/ardiesaeidi+node-baunsu/repo HEAD MIT tests/emails
REPO=voku/PHPMailer-BMH add instaclick $M/voku+PHPMailer-BMH/repo HEAD 'GPL-2.0-only (repo-level; upstream of these 5 files unknown)' tests/fixtures/instaclick
