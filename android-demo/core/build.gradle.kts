// Plain Kotlin/JVM: no Android classes, so its tests run anywhere (and on Linux without Gradle:
// tests/run-linux-checks.sh). On Android, org.json is the platform's own.
plugins {
    alias(libs.plugins.kotlin.jvm)
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    compileOnly(libs.org.json)
    testImplementation(libs.org.json)
    testImplementation(libs.junit)
}

tasks.test {
    // the golden vectors written by `mobilekit goldens` (committed copy, shared with ios-demo)
    systemProperty("mobilekit.goldens", rootProject.file("../ios-demo/MobileKitCore/Tests/MobileKitCoreTests/Goldens").path)
}
