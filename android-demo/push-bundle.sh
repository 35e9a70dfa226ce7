#!/usr/bin/env bash
# Copies a mobilekit bundle to a connected Android device and prints the folder the app opens.
#   ./push-bundle.sh ../out/smollm2-135m-executorch-int4 [DEVICE_DIR]
# The app reads the bundle in place from /data/local/tmp (readable by debuggable apps started
# with `adb shell am start`, the command printed at the end).
set -euo pipefail
bundle=${1:?usage: push-bundle.sh BUNDLE_DIR [DEVICE_DIR]}
device_root=${2:-/data/local/tmp/mobilekit}
[[ -f "$bundle/mobilekit.json" ]] || { echo "error: $bundle has no mobilekit.json; export one with 'mobilekit export'" >&2; exit 1; }
target=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["target"])' "$bundle/mobilekit.json")
if [[ "$target" == "coreml" ]]; then
  echo "error: $bundle is a Core ML bundle; the Android app runs --target executorch or --target onnx bundles" >&2
  exit 1
fi
command -v adb >/dev/null || { echo "error: adb not found; install Android platform-tools and put adb on PATH" >&2; exit 1; }
name=$(basename "$(cd "$bundle" && pwd)")
dest="$device_root/$name"
adb shell mkdir -p "$dest"
adb push "$bundle/." "$dest/" >/dev/null
adb shell chmod -R a+rX "$device_root"
echo "Pushed $bundle ($target) to $dest"
echo "Open it with:"
echo "  adb shell am start -n dev.mobilekit.demo/.MainActivity --es bundle $dest"
echo "$dest"
