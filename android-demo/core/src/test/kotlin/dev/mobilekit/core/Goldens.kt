package dev.mobilekit.core

import java.io.File
import org.json.JSONArray
import org.json.JSONObject

/**
 * The golden vectors written by `mobilekit goldens DIR` (mobilekit/goldens.py). The folder comes
 * from the system property `mobilekit.goldens` or the environment variable MOBILEKIT_GOLDENS;
 * Gradle points it at the committed copy in ios-demo/MobileKitCore/Tests/MobileKitCoreTests/Goldens.
 */
object Goldens {
    val folder: File by lazy {
        val path = System.getProperty("mobilekit.goldens") ?: System.getenv("MOBILEKIT_GOLDENS")
            ?: error("set -Dmobilekit.goldens=DIR or MOBILEKIT_GOLDENS=DIR (write it with `mobilekit goldens DIR`)")
        File(path).also { require(it.isDirectory) { "golden folder $it does not exist" } }
    }

    fun cases(file: String): List<JSONObject> {
        val root = JSONObject(File(folder, file).readText())
        check(root.getInt("goldens_version") == 1) { "$file: unknown goldens_version" }
        val cases = root.getJSONArray("cases")
        return (0 until cases.length()).map { cases.getJSONObject(it) }
    }

    /** JUnit Parameterized rows: (name, case). */
    fun rows(file: String, name: (JSONObject) -> String = { it.getString("name") }): List<Array<Any>> =
        cases(file).map { arrayOf(name(it), it) }
}

fun JSONArray.strings(): List<String> = (0 until length()).map { getString(it) }

fun JSONArray.ints(): List<Int> = (0 until length()).map { getInt(it) }

fun jsonToKotlin(value: Any?): Any? = when (value) {
    JSONObject.NULL, null -> null
    is JSONObject -> value.keys().asSequence().associateWith { jsonToKotlin(value.get(it)) }
    is JSONArray -> (0 until value.length()).map { jsonToKotlin(value.get(it)) }
    else -> value
}
