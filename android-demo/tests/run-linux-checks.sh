#!/usr/bin/env bash
# The android-demo checks that run without Android Studio (what tests/apps/test_android_core.py runs):
#   1. core/ (plain Kotlin) and its JUnit tests compiled with kotlinc and run against the golden
#      vectors in GOLDENS_DIR (default: the committed copy in ios-demo);
#   2. the app's engine sources type-checked against tests/stubs (stubs of ExecuTorch, ONNX
#      Runtime and DJL tokenizers; see tests/stubs/README.md).
# Ends with the line "N passed, N failed" (the type-check counts as one test).
#   android-demo/tests/run-linux-checks.sh [GOLDENS_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
demo=$(cd "$here/.." && pwd)
goldens=$(cd "${1:-$demo/../ios-demo/MobileKitCore/Tests/MobileKitCoreTests/Goldens}" && pwd)
"$here/fetch-jvm-toolchain.sh"
tc=${MOBILEKIT_JVM_TOOLCHAIN:-$demo/.toolchain}
kotlinc="$tc/kotlinc/bin/kotlinc"
jars="$tc/jars"
out="$demo/build/linux-checks"
rm -rf "$out" && mkdir -p "$out"

echo "== compiling core and its tests (kotlinc $(cat "$tc/kotlinc/build.txt" 2>/dev/null || echo '?'))"
"$kotlinc" -nowarn -jvm-target 17 -d "$out/core" -cp "$jars/android-json.jar:$jars/junit4.jar:$jars/hamcrest.jar" \
  "$demo/core/src/main/kotlin" "$demo/core/src/test/kotlin" "$here/runner/TestMain.kt"

echo "== type-checking the app's engines against the runtime stubs"
mkdir -p "$out/stubs"
javac -nowarn -d "$out/stubs" $(find "$here/stubs" -name '*.java')
typecheck=0
"$kotlinc" -nowarn -jvm-target 17 -d "$out/engines" -cp "$out/core:$out/stubs:$jars/android-json.jar" \
  "$demo/app/src/main/java/dev/mobilekit/demo/engine" || typecheck=1

echo "== running core tests with goldens from $goldens"
classes=$(cd "$demo/core/src/test/kotlin" && grep -rl '@Test' . | sed 's|^\./||; s|\.kt$||; s|/|.|g' | sort)
set +e
java -Dmobilekit.goldens="$goldens" -cp "$out/core:$tc/kotlinc/lib/kotlin-stdlib.jar:$jars/android-json.jar:$jars/junit4.jar:$jars/hamcrest.jar" \
  dev.mobilekit.testrunner.TestMainKt $classes | tee "$out/junit.log"
junit=${PIPESTATUS[0]}
set -e
summary=$(grep '^junit summary:' "$out/junit.log" || echo "junit summary: passed=0 failed=1 skipped=0")
passed=$(sed -E 's/.*passed=([0-9]+).*/\1/' <<<"$summary")
failed=$(sed -E 's/.*failed=([0-9]+).*/\1/' <<<"$summary")
if [[ $typecheck == 0 ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL engine type-check"; fi
echo "$passed passed, $failed failed"
[[ $junit == 0 && $typecheck == 0 ]]
