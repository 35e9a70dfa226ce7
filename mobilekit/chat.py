"""Prompt formatting from a bundle's manifest (its chat template), as apps do it."""

from __future__ import annotations


def format_prompt(manifest: dict, user_text: str) -> str:
    """Render one user turn with the manifest's chat template, ready for generation.
    Without a template the text is returned unchanged."""
    template = manifest.get("chat_template")
    if not template:
        return user_text
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[[{"role": "user", "content": user_text}]],
        chat_template=template,
        add_generation_prompt=True,
    )
    return rendered[0]
