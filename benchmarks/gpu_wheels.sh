#!/usr/bin/env bash
# Fetch, here, the wheels that benchmarks/gpu_check.sh needs on a lent GPU machine, which has
# torch, accelerate, numpy and sentencepiece but reaches no package registry: speechforge's
# other import-time dependencies, for its Python 3.12 on x86-64, into .whl/ (git-ignored); the audio
# ones (soundfile, kaldi-native-fbank, espeak-ng) let benchmarks on the shared recordings run there too.
# Then carry .whl with the device call: bash benchmarks/gpu_check.sh installs them first.
set -euo pipefail
cd "$(dirname "$0")/.."
platforms=()
for n in 2_28 2_27 2_17 2014 1; do
  case $n in 2014) platforms+=(--platform manylinux2014_x86_64);; 1) platforms+=(--platform manylinux1_x86_64);;
    *) platforms+=(--platform "manylinux_${n}_x86_64");; esac
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 \
  catalogue==2.0.10 jiwer==4.0.0 rapidfuzz==3.14.6 \
  soundfile==0.14.0 cffi==2.0.0 pycparser==3.0 kaldi-native-fbank==1.23.0 espeakng-loader==0.2.4 tqdm==4.70.1
ls .whl
# --peers: the peer harness's files and the wheels of the peers (ESPnet, SpeechBrain) into .whl/peers,
# for benchmarks/lanes.py on the lent machine's CPU (the machine has torch, scipy, PyYAML and torchaudio).
if [ "${1:-}" = --peers ]; then
  peers=${PEERS:-../shared/bench/peers}
  mkdir -p .whl/peers/wheels
  cp "$peers"/{spec.json,common.py,best.py,table.py,espnet_adapter.py,speechbrain_adapter.py,torch_adapter.py} .whl/peers/
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .whl/peers/wheels espnet==202511 configargparse==1.9.0 editdistance==0.8.1 humanfriendly==10.0 typeguard==4.6.1 \
    speechbrain==1.1.2 hyperpyyaml==1.2.3 ruamel.yaml==0.18.17 ruamel.yaml.clib==0.2.15
  ls .whl/peers .whl/peers/wheels
fi
