#!/usr/bin/env bash
# Seeds each fuzz target's corpus from the test fixtures and runs it (nightly + cargo-fuzz).
#   fuzz/run.sh [seconds per target, default 600] [targets…]
# Crashes land in fuzz/artifacts/<target>/; add each as a regression case to tests/hostile_files.rs.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
targets=${*:-pickle checkpoint model_dir plan features}
fx=../tests/fixtures
mkdir -p corpus/{pickle,checkpoint,model_dir,plan,features}
for f in ckpt_amg.pth ckpt_la.pth ckpt_timm_b.pth ckpt_opaque.pth; do
    python3 -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); n=[x for x in z.namelist() if x.endswith('data.pkl')][0]; open(sys.argv[2],'wb').write(z.read(n))" "$fx/$f" "corpus/pickle/$f.pkl"
done
cp "$fx/ckpt_opaque.pth" "$fx/ckpt_timm_b.pth" corpus/checkpoint/
python3 -c "
import struct,sys
c=open(sys.argv[1],'rb').read(); w=open(sys.argv[2],'rb').read()
hl=struct.unpack('<Q',w[:8])[0]
open(sys.argv[3],'wb').write(struct.pack('<H',len(c))+c+w[:8+hl]+w[8+hl:8+hl+4096])
" "$fx/analyze_model/config.json" "$fx/analyze_model/model.safetensors" corpus/model_dir/analyze_model
python3 -c "
import json,sys
c=json.load(open(sys.argv[1]))
json.dump({'heads':[l['heads'] for l in c['layers']],'tokens':[l['tokens'] for l in c['layers']]},open(sys.argv[2],'w'))
" "$fx/analyze_model/config.json" corpus/plan/unpruned.json
python3 -c "
import json,struct,math,sys
names=['%04d_c%ds1_000001_00.jpg'%(i%3,1+i%2) for i in range(6)]
data=b''.join(struct.pack('<f',math.sin(i*0.37)) for i in range(48))
h=json.dumps({'__metadata__':{'names':json.dumps(names)},'features':{'dtype':'F32','shape':[6,8],'data_offsets':[0,len(data)]}}).encode()
open(sys.argv[1],'wb').write(struct.pack('<Q',len(h))+h+data)
" corpus/features/six.safetensors
for t in $targets; do
    cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=4096 -max_len=1048576 2>&1 | tail -n 12
done
