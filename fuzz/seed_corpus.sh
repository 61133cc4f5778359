#!/usr/bin/env bash
# Builds fuzz/corpus/<target>/ from the golden folders (../shared/golden or $OFTQ_GOLDEN_DIR):
# folder targets get `[u32 LE len(config)][config][safetensors]`, config targets the JSON files.
set -euo pipefail
cd "$(dirname "$0")"
golden="${OFTQ_GOLDEN_DIR:-../../shared/golden}"
mkdir -p corpus/checkpoint_folder corpus/adapter_folder corpus/adapter_config corpus/checkpoint_config
pack() { # config safetensors out
  python3 - "$1" "$2" "$3" <<'PY'
import struct, sys
c = open(sys.argv[1], 'rb').read(); w = open(sys.argv[2], 'rb').read()
open(sys.argv[3], 'wb').write(struct.pack('<I', len(c)) + c + w)
PY
}
i=0
while IFS= read -r cfg; do
  d=$(dirname "$cfg"); i=$((i+1))
  cp "$cfg" "corpus/checkpoint_config/$i.json"
  pack "$cfg" "$d/model.safetensors" "corpus/checkpoint_folder/$i.bin"
done < <(find "$golden" -name config.json -path '*/model/*' | sort)
while IFS= read -r cfg; do
  d=$(dirname "$cfg"); i=$((i+1))
  cp "$cfg" "corpus/adapter_config/$i.json"
  pack "$cfg" "$d/adapter_model.safetensors" "corpus/adapter_folder/$i.bin"
done < <(find "$golden" -name adapter_config.json | sort)
echo "corpus: $(find corpus -type f | wc -l) files"
