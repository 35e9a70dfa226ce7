package dev.mobilekit.testrunner

import org.junit.runner.Description
import org.junit.runner.JUnitCore
import org.junit.runner.notification.Failure
import org.junit.runner.notification.RunListener
import kotlin.system.exitProcess

/**
 * Runs the JUnit 4 classes named on the command line (what Gradle's test task does on a machine
 * with Gradle) and ends with a summary line `junit summary: passed=N failed=N skipped=N` that
 * run-linux-checks.sh turns into its closing `N passed, N failed`; exits 1 if anything failed.
 */
fun main(args: Array<String>) {
    val core = JUnitCore()
    core.addListener(object : RunListener() {
        override fun testFailure(failure: Failure) {
            println("FAIL ${failure.description.displayName}: ${failure.message}")
            failure.exception.stackTrace.take(4).forEach { println("    at $it") }
        }

        override fun testFinished(description: Description) {}
    })
    val classes = args.map { Class.forName(it) }.toTypedArray()
    val result = core.run(*classes)
    val failed = result.failureCount
    val passed = result.runCount - failed
    val skipped = result.ignoreCount
    println("junit summary: passed=$passed failed=$failed skipped=$skipped")
    exitProcess(if (failed == 0 && result.runCount > 0) 0 else 1)
}
