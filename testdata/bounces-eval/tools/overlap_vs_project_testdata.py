import os,sys,re,collections
def norm(l):
    l=l.lower()
    l=re.sub(r'[\w.+=-]+@[\w.-]+','<E>',l)
    l=re.sub(r'\b(?:[a-z0-9-]+\.)+[a-z]{2,}\b','<H>',l)
    l=re.sub(r'\d','0',l)
    l=re.sub(r'\s+',' ',l).strip()
    return l
def lines(p):
    s=open(p,'rb').read().decode('latin-1')
    out=set()
    for l in s.splitlines():
        if re.match(r'^\s*(Content-|MIME-|--|Received:|DKIM|X-|Message-ID|Date:|References|In-Reply-To|boundary|\tby |\s+id |\s+for )',l,re.I): continue
        n=norm(l)
        if len(n)>=25 and len(set(n))>8: out.add(n)
    return out
ref={}
for root,_,fs in os.walk('/work/main/testdata'):
    for f in fs:
        if f.endswith(('.eml','.txt','.msg')): ref[os.path.join(root,f)]=lines(os.path.join(root,f))
idx=collections.defaultdict(set)
for k,v in ref.items():
    for l in v: idx[l].add(k)
base='/work/research/bounce-eval/emails'
mine={}
for src in sorted(os.listdir(base)):
    for f in sorted(os.listdir(os.path.join(base,src))):
        mine[(src,f)]=lines(os.path.join(base,src,f))
mycount=collections.Counter(l for v in mine.values() for l in v)
for (src,f),L in mine.items():
    c=collections.defaultdict(list)
    for l in L:
        ks=idx.get(l,())
        if 0<len(ks)<=3 and mycount[l]<=3:
            for k in ks: c[k].append(l)
    best=sorted(c.items(),key=lambda kv:-len(kv[1]))[:1]
    for k,ls in best:
        frac=len(ls)/max(1,len(L))
        if len(ls)>=3 or frac>=0.3: print(src,f,os.path.relpath(k,'/work/main'),len(ls),len(L),round(frac,2),' || '.join(ls[:2])[:200],sep='\t')
