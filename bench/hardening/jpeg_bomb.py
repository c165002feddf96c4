"""Progressive JPEGs of many scans (issue 28, point 1), as src/data/jpeg/synthetic.rs makes them.

    jpeg_bomb.py WIDTH HEIGHT COMPONENTS SCANS OUT.jpg [repeat|coef|band]

`repeat` sends one AC scan again and again (the issue's bomb: 8192 8192 3 2000); `coef` and
`band` are valid progressions of up to 100 scans, the worst files maas still accepts (AMAX sets
the successive-approximation depth: 13, libjpeg's most; jpeg-decoder takes up to 7).
"""
import os
AMAX=int(os.environ.get("AMAX","13"))
import sys, struct
def seg(out, code, body): out += bytes([0xFF, code]) + struct.pack('>H', len(body)+2) + bytes(body)
class Bits:
    def __init__(s): s.b=bytearray(); s.acc=0; s.n=0
    def put(s, v, n):
        for i in reversed(range(n)):
            s.acc=(s.acc<<1)|((v>>i)&1); s.n+=1
            if s.n==8:
                s.b.append(s.acc)
                if s.acc==0xFF: s.b.append(0)
                s.acc=0; s.n=0
    def finish(s, out):
        if s.n: p=8-s.n; s.put((1<<p)-1,p)
        out += s.b
def bomb(w,h,comps,scans,mode='coef'):
    blocks=((w+7)//8)*((h+7)//8)
    out=bytearray([0xFF,0xD8])
    seg(out,0xDB,[0]+[1]*64)
    sof=[8]+list(struct.pack('>HH',h,w))+[comps]
    for c in range(1,comps+1): sof+= [c,0x11,0]
    seg(out,0xC2,sof)
    seg(out,0xC4,[0,1]+[0]*15+[0])
    seg(out,0xC4,[0x10,0,0,0,15]+[0]*12+[r<<4 for r in range(15)])
    def sos(cs,ss,se,ah,al): seg(out,0xDA,[len(cs)]+sum([[c,0] for c in cs],[])+[ss,se,(ah<<4)|al])
    dc_al = AMAX if mode=='band' else 0
    sos(list(range(1,comps+1)),0,0,0,dc_al)
    n=blocks*comps
    # n zero bits, fast
    out += bytes(n//8)
    if n%8: out.append((1<<(8-n%8))-1)
    if mode=='coef':
        acs=[(c,k,k,0 if al==AMAX else al+1,al) for c in range(1,comps+1) for k in range(1,64) for al in range(AMAX,-1,-1)]
    elif mode=='band':
        acs=[(c,1,63,0 if al==AMAX else al+1,al) for c in range(1,comps+1) for al in range(AMAX,-1,-1)]
        acs+=[(None,0,0,al+1,al) for al in range(AMAX-1,-1,-1)]
    else: # repeat one full-band AC scan (a bogus progression)
        acs=[(1,1,63,0,0)]*(scans)
    for (c,ss,se,ah,al) in acs[:scans-1]:
        if c is None:
            # DC refinement, interleaved: one bit a block
            sos(list(range(1,comps+1)),0,0,ah,al)
            out += bytes(n//8)
            if n%8: out.append((1<<(8-n%8))-1)
            continue
        sos([c],ss,se,ah,al)
        b=Bits(); left=blocks
        while left>0:
            run=min(left,32767); r=run.bit_length()-1
            b.put(r,4); b.put(run-(1<<r),r); left-=run
        b.finish(out)
    out+=bytes([0xFF,0xD9])
    return bytes(out)
w,h,c,s,path=int(sys.argv[1]),int(sys.argv[2]),int(sys.argv[3]),int(sys.argv[4]),sys.argv[5]
mode=sys.argv[6] if len(sys.argv)>6 else 'coef'
open(path,'wb').write(bomb(w,h,c,s,mode))
