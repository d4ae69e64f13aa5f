import os,re,email,email.policy,collections,csv,subprocess
BASE='/work/research/bounce-eval'
man={}
for r in csv.DictReader(open(BASE+'/MANIFEST.tsv'),delimiter='\t'): man[r['local_file']]=r
def labels(slug):
    p=f'{BASE}/labels/{slug}.tsv'; d=collections.defaultdict(list)
    if os.path.exists(p):
        for r in csv.DictReader(open(p),delimiter='\t'): d[r['file']].append(r['source_label'])
    return d
def cls_from(slug,labs):
    out=[]
    for l in labs:
        if slug=='flufl-bounce':
            m=re.search(r'(temporary|permanent) failure',l)
            if m: out.append('flufl:'+m.group(1))
        elif slug=='mail-deliverystatus-bounceparser':
            m=re.search(r'std_reason=(\w+)',l)
            if m and 'not enforced' not in l and 'TODO' not in l: out.append('bounceparser:'+m.group(1))
        elif slug=='livebg-bounce-email':
            m=re.search(r'ruleCat=(\w+); bounceType=(\w+)',l)
            if m: out.append(f'bmh:{m.group(1)}/{m.group(2)}')
            m=re.search(r'type=(hard|soft)',l)
            if m and l.startswith('bounce_email'): out.append('bounce_email:'+m.group(1))
        elif slug=='node-baunsu':
            if 'isHard=true' in l: out.append('baunsu:hard')
        elif slug=='tmail-bouncer':
            if 'BoxFullBouncer' in l: out.append('tmail_bouncer:box_full')
        elif slug in('cfortune-php-bounce-handler','zoonru-php-bounce-handler'):
            m=re.search(r'action=(\w+); status=([\d.]+); reason=(\w+)',l)
            if m: out.append(f'zoonru:{m.group(1)}/{m.group(3)}')
        elif slug=='mailgun-flanker':
            m=re.search(r'status=([\d.]+)',l)
            if m: out.append('flanker:status='+m.group(1))
    return '|'.join(dict.fromkeys(out))
CUT=re.compile(r'^\s*(-{2,}\s*(this is a copy of the message|below this line is a copy|original message|the header of the original message|transcript of session follows)|-+ ?(original message|returned message|unsent message|message text) ?-+|original message follows|------ this is a copy|the original message was received)',re.I)
def text_parts(msg):
    # yield decoded text of parts outside message/rfc822 or text/rfc822-headers
    if msg.get_content_type() in ('message/rfc822','text/rfc822-headers','message/rfc822-headers'): return
    if msg.get_content_type()=='message/delivery-status':
        pl=msg.get_payload()
        if isinstance(pl,list):
            for b in pl: yield ('dsn',b.as_string())
        else: yield ('dsn',str(pl))
        return
    if msg.is_multipart():
        for p in msg.get_payload(): yield from text_parts(p)
        return
    if msg.get_content_maintype()=='text' or msg.get_content_type()=='application/octet-stream' and False:
        try:
            raw=msg.get_payload(decode=True) or b''
        except Exception: raw=msg.get_payload().encode('latin-1','replace')
        cs=msg.get_content_charset() or 'latin-1'
        try: t=raw.decode(cs,'replace')
        except LookupError: t=raw.decode('latin-1','replace')
        if msg.get_content_subtype()=='html':
            t=re.sub(r'<br\s*/?>|</p>|</div>|</tr>','\n',t,flags=re.I); t=re.sub(r'<[^>]+>','',t)
            import html; t=html.unescape(t)
        yield ('text',t)
def clean(s): return re.sub(r'\s+',' ',s).strip()
def extract(path):
    raw=open(path,'rb').read()
    msg=email.message_from_bytes(raw,policy=email.policy.compat32)
    found=[]
    for kind,t in text_parts(msg):
        t=t.replace('\r\n','\n')
        if kind=='dsn':
            for m in re.finditer(r'^(Diagnostic-Code|X-Postfix-Diagnostic|X-Diagnostic|Remote-Diagnostic):[ \t]*(.*(?:\n[ \t]+.*)*)',t,re.M|re.I):
                v=clean(m.group(2))
                if len(v)>3: found.append(v)
            continue
        lines=t.split('\n'); keep=[]
        for l in lines:
            if CUT.match(l): break
            keep.append(l)
        t='\n'.join(keep)
        for m in re.finditer(r'^Diagnostic-Code:[ \t]*(.*(?:\n[ \t]+.*)*)',t,re.M|re.I): found.append(clean(m.group(1)))
        # postfix "said:" blocks
        for m in re.finditer(r'said:\s*(.*?(?:\n[ \t]+.*?)*?)(?:\(in reply to[^)]*\)|\n\s*\n|\n\S|$)',t,re.S):
            v=clean(m.group(1))
            if re.match(r'[245]\d\d',v): found.append(v)
        ls=t.split('\n')
        for i,l in enumerate(ls):
            s=l.strip()
            m=re.match(r'^(?:<<<\s*|>>>.*?<<<\s*|Remote host said:\s*|.*?host \S+ \[[\d.:a-f]+\]:\s*|.*?\[[\d.]+\] (?:said|says):\s*|\S+@\S+:?\s+)?([245]\d\d[ -].{6,})$',s)
            if m and not re.match(r'^[245]\d\d[ -]\d{2}[:.]',m.group(1)) and re.search(r'[A-Za-z]{3}',m.group(1)):
                v=m.group(1)
                # join continuation lines of multi-line replies
                j=i+1
                while j<len(ls) and re.match(r'^\s*(<<<\s*)?[245]\d\d[ -]',ls[j]) and ls[j].strip()[:3]==v[:3]:
                    v+=' '+re.sub(r'^\s*(<<<\s*)?','',ls[j]); j+=1
                if 'said:' in s: continue
                k=j
                while k<len(ls) and k<j+4 and re.match(r'^[ \t]+\S',ls[k]) and not re.match(r'^\s*(<<<|>>>)?\s*[245]\d\d[ -]',ls[k]):
                    v+=' '+ls[k].strip(); k+=1
                found.append(clean(v)); continue
            if re.search(r'\(#[45]\.\d{1,3}\.\d{1,3}\)',s) or re.search(r'#[45]\.\d\.\d+\b',s) and len(s)>15:
                found.append(clean(s))
    def core(x):
        c=x.lower()
        c=re.sub(r'^(smtp|x-postfix|x-unix|x-notes|x-local|mailbox|x-qmail|x-exim)\s*;\s*','',c)
        c=re.sub(r'^.*?\bsaid:\s*','',c)
        c=re.sub(r'\s*\(in reply to[^)]*\)?\s*$','',c)
        c=re.sub(r'[^a-z0-9]+',' ',c).strip()
        return c
    found=[f for f in found if not re.match(r'^(?:[a-z-]+;\s*)?[23]\d\d[ -]',f.strip(),re.I)]
    cores=[core(f) for f in found]
    keep=[]
    for i,f in enumerate(found):
        ci=cores[i]
        dominated=any((ci!=cj and ci in cj) or (ci==cj and j<i) for j,cj in enumerate(cores) if j!=i)
        if not dominated: keep.append(f)
    found=keep
    out=[]; seen=set()
    for f in found:
        f=f.strip(' .')
        k=f.lower()
        if k in seen or len(f)<6: continue
        seen.add(k); out.append(f)
    return out
rows_all={}
for slug in sorted(os.listdir(BASE+'/emails')):
    L=labels(slug); rows=collections.OrderedDict()
    for fn in sorted(os.listdir(f'{BASE}/emails/{slug}')):
        lf=f'emails/{slug}/{fn}'; mm=man[lf]
        cls=cls_from(slug,L.get(fn,[]))
        for t in extract(f'{BASE}/{lf}'):
            t=t.replace('\t',' ')
            key=t.lower()
            src=f"{mm['source_repo']}@{mm['commit'][:12]}:{mm['original_path']}"
            if key in rows:
                rows[key][2].append(src)
                if cls and cls not in rows[key][1]: rows[key][1].append(cls)
            else: rows[key]=[t,[cls] if cls else [],[src]]
    rows_all[slug]=rows
# test-file literal lines
lit=collections.defaultdict(list)
g='/work/.mirror/rjbs+Mail-DeliveryStatus-BounceParser/repo'
c=subprocess.run(['git','--git-dir='+g,'rev-parse','HEAD'],capture_output=True,text=True).stdout.strip()
for tf,cl in [('t/various-unknown.t','user_unknown'),('t/various-domain.t','domain_error')]:
    s=subprocess.run(['git','--git-dir='+g,'show','HEAD:'+tf],capture_output=True,text=True).stdout
    for m in re.finditer(r'"([\w.-]+\.msg)"\s*=>\s*\{(.*?)\n    \},',s,re.S):
        fn,body=m.groups()
        r=re.search(r'"reason"\s*=>\s*(?:\n\s*)?([\'"])(.*?)\1,',body,re.S)
        sr=re.search(r"std_reason\s*=>\s*'(\w+)'",body)
        if r and re.match(r'\s*[245]\d\d|\[',r.group(2)):
            lit['mail-deliverystatus-bounceparser'].append((clean(r.group(2)),'bounceparser:'+(sr.group(1) if sr else cl),f'rjbs/Mail-DeliveryStatus-BounceParser@{c[:12]}:{tf} (expected reason for t/corpus/{fn})'))
g='/work/.mirror/mailgun+flanker/repo'
c=subprocess.run(['git','--git-dir='+g,'rev-parse','HEAD'],capture_output=True,text=True).stdout.strip()
lit['mailgun-flanker'].append(('smtp; 550-5.1.1 The email account that you tried to reach does not exist. Please try 550-5.1.1 double-checking the recipient\'s email address for typos or 550-5.1.1 unnecessary spaces. Learn more at 550 5.1.1 http://mail.google.com/support/bin/answer.py?answer=6596 17si20661415yxe.22','flanker:status=5.1.1',f'mailgun/flanker@{c[:12]}:tests/mime/bounce_tests.py (expected diagnostic_code for zed.eml)'))
lit['mailgun-flanker'].append(('smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient noname@example.com not found by SMTP address lookup','flanker:status=5.1.10',f'mailgun/flanker@{c[:12]}:tests/mime/bounce_tests.py (expected diagnostic_code for office365.eml)'))
os.makedirs(BASE+'/lines',exist_ok=True)
tot=0
for slug,rows in rows_all.items():
    with open(f'{BASE}/lines/{slug}.tsv','w') as f:
        f.write('text\texpected_class\tsource_path\n')
        n=0
        for k,(t,cl,srcs) in rows.items():
            sp=srcs[0]+(f' (+{len(srcs)-1} more files)' if len(srcs)>1 else '')
            f.write(f"{t}\t{'|'.join(cl)}\t{sp}\n"); n+=1
        for t,cl,sp in lit.get(slug,[]):
            f.write(f"{t}\t{cl}\t{sp}\n"); n+=1
    print(slug,n); tot+=n
print('total',tot)
