package dev.mobilekit.core

import java.io.File

/**
 * Reads and checks a bundle folder pushed to the device: the manifest parses, and every file it
 * lists is present with its recorded size (sha256 is left to `mobilekit validate` on a computer:
 * hashing 100 MB on a phone at every start costs seconds).
 */
fun loadBundle(folder: File): Manifest {
    val manifestFile = File(folder, Manifest.FILE_NAME)
    if (!manifestFile.isFile) {
        throw ManifestException("$folder is not a mobilekit bundle: ${Manifest.FILE_NAME} is missing. Push one with push-bundle.sh.")
    }
    val manifest = Manifest.parse(manifestFile.readText())
    val sizes = org.json.JSONObject(manifestFile.readText()).optJSONObject("files")
    val problems = manifest.files.sorted().mapNotNull { name ->
        val file = File(folder, name)
        val expected = sizes?.optJSONObject(name)?.optLong("bytes", -1L) ?: -1L
        when {
            !file.isFile -> "$name is missing"
            expected >= 0 && file.length() != expected -> "$name has ${file.length()} bytes, the manifest says $expected"
            else -> null
        }
    }
    if (problems.isNotEmpty()) throw ManifestException("bundle $folder is incomplete: ${problems.joinToString("; ")}. Push it again.")
    return manifest
}
