"""Prompt formatting from a bundle's manifest (its chat template), as apps do it."""

from __future__ import annotations

from pathlib import Path

from mobilekit.errors import BundleError, PromptTooLong


def format_prompt(manifest: dict, user_text: str, variables: dict | None = None) -> str:
    """Render one user turn with the manifest's chat template, ready for generation, with
    extra template `variables` (Qwen3's and SmolLM3's enable_thinking, as transformers'
    apply_chat_template passes them). Without a template the text is returned unchanged."""
    template = manifest.get("chat_template")
    if not template:
        return user_text
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, _ = render_jinja_template(
            conversations=[[{"role": "user", "content": user_text}]],
            chat_template=template,
            add_generation_prompt=True,
            **(variables or {}),
        )
    except Exception as e:  # the template is the bundle's data: a broken one is the bundle's fault
        raise BundleError(f"the chat_template in {manifest.get('recipe') or 'the bundle'}'s mobilekit.json cannot be "
                          f"rendered ({type(e).__name__}: {str(e)[:200]}); pass --no-chat, or re-export the "
                          "bundle") from e
    return rendered[0]


def prompt_token_count(bundle_dir, manifest: dict, text: str) -> int:
    """Tokens `text` takes in the bundle's context, counted with its tokenizer.json as the
    runtimes count them (plus the BOS the manifest says apps add)."""
    from tokenizers import Tokenizer

    path = Path(bundle_dir) / "tokenizer.json"
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # a missing or damaged file of the bundle's
        raise BundleError(f"{path} cannot be read ({type(e).__name__}); re-export the bundle") from e
    return len(tokenizer.encode(text, add_special_tokens=False).ids) + int(bool(manifest.get("add_bos")))


def fit_to_context(manifest: dict, prompt_tokens: int, max_new_tokens: int) -> tuple[int, str | None]:
    """(new tokens to ask for, a note when that is fewer than asked): a prompt must leave
    room for at least one new token in the bundle's context; more new tokens than the
    context has left are clamped, not an error."""
    context = int(manifest["max_seq_len"])
    if prompt_tokens >= context:
        raise PromptTooLong(
            f"the prompt is {prompt_tokens} tokens, but the bundle's context is {context} tokens "
            f"(max_seq_len in {manifest.get('recipe') or 'its'} mobilekit.json), with room needed for at least one "
            f"new token: shorten the prompt to at most {context - 1} tokens, or re-export with a larger --max-seq-len"
        )
    room = context - prompt_tokens
    if max_new_tokens > room:
        return room, (f"--max-new-tokens {max_new_tokens} clamped to {room}: the prompt takes {prompt_tokens} of "
                      f"the bundle's {context}-token context")
    return max_new_tokens, None


def template_variable(text: str) -> tuple[str, object]:
    """KEY=VALUE from the command line: true/false become booleans, whole numbers ints, the
    rest stays text (enable_thinking=false -> ("enable_thinking", False))."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise ValueError(f"{text!r} is not KEY=VALUE with KEY a template variable name (e.g. enable_thinking=false)")
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    return key, int(value) if value.lstrip("-").isdigit() else value
