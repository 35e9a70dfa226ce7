package dev.mobilekit.demo

import androidx.compose.runtime.mutableStateListOf
import androidx.compose.runtime.mutableStateOf
import androidx.lifecycle.ViewModel
import androidx.lifecycle.viewModelScope
import dev.mobilekit.core.ChatSession
import dev.mobilekit.core.SamplingConfig
import dev.mobilekit.core.loadBundle
import dev.mobilekit.demo.engine.ChatEngine
import dev.mobilekit.demo.engine.openEngine
import java.io.File
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext

data class Bubble(val fromUser: Boolean, val text: String)

/** Loads the bundle and generates off the UI thread; the screen observes the state below. */
class ChatViewModel : ViewModel() {
    val bubbles = mutableStateListOf<Bubble>()
    val status = mutableStateOf("No bundle loaded")
    val generating = mutableStateOf(false)

    private var engine: ChatEngine? = null
    private var session: ChatSession? = null
    private var job: Job? = null

    fun load(bundlePath: String) {
        job = viewModelScope.launch {
            status.value = "Loading $bundlePath …"
            runCatching {
                withContext(Dispatchers.IO) {
                    val manifest = loadBundle(File(bundlePath))
                    engine?.close()
                    engine = openEngine(File(bundlePath), manifest)
                    session = ChatSession(manifest)
                    manifest
                }
            }.onSuccess { manifest ->
                val checked = when (manifest.validationPassed) { true -> "validated"; false -> "FAILED validation"; null -> "not validated" }
                status.value = "${manifest.modelName} · ${manifest.target} · ${engine?.runtimeName} · $checked"
            }.onFailure { status.value = "Cannot load the bundle: ${it.message}" }
        }
    }

    fun send(text: String, sampling: SamplingConfig = SamplingConfig(temperature = 0.0), maxNewTokens: Int = 256) {
        val engine = engine ?: return
        val session = session ?: return
        bubbles += Bubble(fromUser = true, text = text)
        bubbles += Bubble(fromUser = false, text = "")
        generating.value = true
        job = viewModelScope.launch {
            runCatching {
                withContext(Dispatchers.Default) {
                    session.send(text, { prompt, onPiece -> engine.generate(prompt, maxNewTokens, sampling, onPiece) }) { shown ->
                        viewModelScope.launch(Dispatchers.Main) {
                            val last = bubbles.last()
                            bubbles[bubbles.size - 1] = last.copy(text = last.text + shown)
                        }
                    }
                }
            }.onSuccess { stats ->
                status.value = "prompt ${stats.promptTokens} tok · prefill ${stats.prefillMs} ms · " +
                    "%.1f tok/s · ${engine.runtimeName}".format(stats.decodeTokensPerSecond)
            }.onFailure { status.value = "Generation failed: ${it.message}" }
            generating.value = false
        }
    }

    fun stop() {
        engine?.stop()
    }

    override fun onCleared() {
        engine?.stop()
        engine?.close()
    }
}
