#!/usr/bin/env bash
# Fetches, pinned and checksummed, what the Linux checks of android-demo need, into
# android-demo/.toolchain (git-ignored; idempotent):
#   kotlinc 2.4.20           npm package kotlin-compiler (a full JVM Kotlin compiler, 90 MB)
#   JUnit 4.13.2, Hamcrest 2.2, Android's org.json   Debian bookworm .debs, unpacked (not installed)
# Needs a JDK 17+ (java, javac) on PATH, npm, and apt-get (Debian's package lists).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest=${MOBILEKIT_JVM_TOOLCHAIN:-$here/../.toolchain}

KOTLIN_VERSION=2.4.20
KOTLIN_SHA256=c23dab400d7ce5ea8b6c909947c0ca5454189e4bb1108695b5f464500e5e950f
DEBS=(
  "junit4=4.13.2-3 2f516bef5fa0f714da4f8b95c367c00aea64159c099c5157579fb95823dbcc56 usr/share/java/junit4.jar junit4.jar"
  "libhamcrest-java=2.2-1 a3e84b0462e4bd75bfcd34dd46c9a5db6b9e7174da2d120339f4dc89aab90a56 usr/share/java/hamcrest-2.2.jar hamcrest.jar"
  "libandroid-json-java=10.0.0+r36-1 ec9df493b75f755eef1677ec9851b071e08400f3baee578cd6e4cbef840309e6 usr/share/java/com.android.json-android-10.0.0.jar android-json.jar"
)
stamp="kotlin-$KOTLIN_VERSION $(printf '%s ' "${DEBS[@]}" | sha256sum | cut -c1-16)"
if [[ -f "$dest/.complete" && "$(cat "$dest/.complete")" == "$stamp" ]]; then
  exit 0
fi
for tool in java javac npm apt-get sha256sum; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found; the android-demo Linux checks need a JDK 17+, npm and apt-get" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
check() { echo "$2  $1" | sha256sum --quiet -c - || { echo "error: $1 does not match its pinned sha256" >&2; exit 1; }; }

npm pack --silent "kotlin-compiler@$KOTLIN_VERSION" >/dev/null
check "kotlin-compiler-$KOTLIN_VERSION.tgz" "$KOTLIN_SHA256"
mkdir -p stage/jars && tar xzf "kotlin-compiler-$KOTLIN_VERSION.tgz" && mv package stage/kotlinc

for entry in "${DEBS[@]}"; do
  read -r spec sha inner name <<<"$entry"
  if ! apt-get download -qq "$spec" 2>/dev/null; then
    apt-get update -qq >/dev/null  # a fresh machine has no package lists yet
    apt-get download -qq "$spec"
  fi
  deb=$(ls "${spec%%=*}"_*.deb)
  check "$deb" "$sha"
  dpkg-deb -x "$deb" "deb-${spec%%=*}"
  cp "deb-${spec%%=*}/$inner" "stage/jars/$name"
done

rm -rf "$dest" && mkdir -p "$(dirname "$dest")" && mv stage "$dest"
echo "$stamp" >"$dest/.complete"
echo "JVM toolchain ready in $dest"
