package dev.mobilekit.demo

import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.setContent
import androidx.activity.viewModels
import androidx.compose.foundation.background
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.lazy.LazyColumn
import androidx.compose.foundation.lazy.items
import androidx.compose.foundation.shape.RoundedCornerShape
import androidx.compose.material3.Button
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Surface
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.unit.dp

/**
 * The chat screen. The bundle folder comes from the launch intent
 * (`adb shell am start -n dev.mobilekit.demo/.MainActivity --es bundle /data/local/tmp/mobilekit/NAME`,
 * which push-bundle.sh prints) or from the path field.
 */
class MainActivity : ComponentActivity() {
    private val model: ChatViewModel by viewModels()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val fromIntent = intent.getStringExtra("bundle")
        if (savedInstanceState == null && fromIntent != null) model.load(fromIntent)
        setContent { MaterialTheme { Surface(Modifier.fillMaxSize()) { ChatScreen(model, fromIntent ?: DEFAULT_BUNDLE) } } }
    }

    companion object {
        const val DEFAULT_BUNDLE = "/data/local/tmp/mobilekit/smollm2-135m-executorch-int4"
    }
}

@Composable
fun ChatScreen(model: ChatViewModel, initialPath: String) {
    var path by remember { mutableStateOf(initialPath) }
    var input by remember { mutableStateOf("") }
    Column(Modifier.fillMaxSize().padding(12.dp)) {
        Row(verticalAlignment = androidx.compose.ui.Alignment.CenterVertically) {
            OutlinedTextField(path, { path = it }, Modifier.weight(1f), label = { Text("Bundle folder") }, singleLine = true)
            Button({ model.load(path) }, Modifier.padding(start = 8.dp)) { Text("Load") }
        }
        Text(model.status.value, style = MaterialTheme.typography.bodySmall, modifier = Modifier.padding(vertical = 6.dp))
        LazyColumn(Modifier.weight(1f).fillMaxWidth(), verticalArrangement = Arrangement.spacedBy(6.dp)) {
            items(model.bubbles) { bubble ->
                Text(
                    bubble.text,
                    Modifier.fillMaxWidth()
                        .background(
                            if (bubble.fromUser) MaterialTheme.colorScheme.primaryContainer else MaterialTheme.colorScheme.surfaceVariant,
                            RoundedCornerShape(12.dp),
                        )
                        .padding(10.dp),
                )
            }
        }
        Row(verticalAlignment = androidx.compose.ui.Alignment.CenterVertically) {
            OutlinedTextField(input, { input = it }, Modifier.weight(1f), label = { Text("Message") })
            if (model.generating.value) {
                Button({ model.stop() }, Modifier.padding(start = 8.dp)) { Text("Stop") }
            } else {
                Button({ model.send(input.trim()); input = "" }, Modifier.padding(start = 8.dp), enabled = input.isNotBlank()) { Text("Send") }
            }
        }
    }
}
