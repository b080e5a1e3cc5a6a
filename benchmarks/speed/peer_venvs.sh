#!/usr/bin/env bash
# The peers' own venvs for the CPU benchmarks, each apart from svdedit's (their pins conflict with ours):
#
#   benchmarks/speed/peer_venvs.sh ep-openvino [DIR]    onnxruntime + its OpenVINO plugin provider (bench_openvino_unet)
#   benchmarks/speed/peer_venvs.sh optimum [DIR]        Optimum's ONNX Runtime pipelines (bench_speed, bench_edit)
#   benchmarks/speed/peer_venvs.sh optimum-intel [DIR]  optimum-intel's OVStableDiffusionPipeline
#   benchmarks/speed/peer_venvs.sh genai [DIR]          OpenVINO GenAI's Text2ImagePipeline
#   benchmarks/speed/peer_venvs.sh nncf [DIR]           NNCF's post-training quantization (bench_nncf)
#
# DIR defaults to /tmp/<name>. uv does the installs when the checkout has it (make puts it in build/tools), else
# pip. torch comes from pip's find-links where this machine keeps its CPU wheel (elsewhere add PyTorch's CPU index:
# TORCH_INDEX=https://download.pytorch.org/whl/cpu). Each venv gets this checkout without dependencies, so that the
# benchmarks' child processes can import their own module. Pins: what the results in benchmarks/results/ used.
set -euo pipefail
name=${1:?"usage: $0 ep-openvino|optimum|optimum-intel|genai|nncf [DIR]"}
dir=${2:-/tmp/$name}
root=$(cd "$(dirname "$0")/../.." && pwd)
uv=$root/build/tools/bin/uv
links=$(python3 -m pip config get global.find-links 2>/dev/null || true)
extra=()
[ -n "$links" ] && extra+=(--find-links "$links")
[ -n "${TORCH_INDEX:-}" ] && extra+=(--extra-index-url "$TORCH_INDEX" --index-strategy unsafe-best-match)

case $name in
  ep-openvino)   pkgs=("onnxruntime==1.32.0" "onnxruntime-ep-openvino==1.8.1" numpy) ;;
  optimum)       pkgs=("torch==2.13.0" "optimum-onnx[onnxruntime]==0.1.0" "diffusers<=0.39" pillow safetensors tokenizers) ;;
  # optimum-intel 2.2 needs transformers < 5.6 and brings its own OpenVINO; its export needs torch
  optimum-intel) pkgs=("torch==2.13.0" "optimum-intel[openvino,diffusers]==2.2.0" "transformers<5.6" pillow safetensors) ;;
  genai)         pkgs=("openvino-genai==2026.4.1.0" numpy pillow) ;;
  # NNCF beside svdedit's runtime (bench_nncf records the calibration with it): torch-free
  nncf)          pkgs=("nncf==3.4.0" "openvino==2026.4.1" "onnxruntime==1.32.0" onnx numpy pillow tokenizers safetensors tqdm) ;;
  *) echo "$0: unknown peer $name (ep-openvino, optimum, optimum-intel, genai, nncf)" >&2; exit 2 ;;
esac

if [ -x "$uv" ]; then
  "$uv" venv -q -p 3.11 "$dir"
  "$uv" pip install -q --python "$dir/bin/python" "${extra[@]}" "${pkgs[@]}"
  "$uv" pip install -q --python "$dir/bin/python" --no-deps -e "$root"
else
  python3.11 -m venv "$dir"
  "$dir/bin/pip" install -q "${extra[@]}" "${pkgs[@]}"
  "$dir/bin/pip" install -q --no-deps -e "$root"
fi
if [ "$name" = optimum-intel ]; then
  # optimum-intel pulls torchvision, whose PyPI build does not load against torch's CPU build ("operator
  # torchvision::nms does not exist"), and transformers then cannot import PreTrainedModel; nothing here needs it
  if [ -x "$uv" ]; then "$uv" pip uninstall -q --python "$dir/bin/python" torchvision
  else "$dir/bin/pip" uninstall -q -y torchvision; fi
fi
echo "$dir/bin/python"
