"""Chat templates: LLaMA-Factory 0.9.5's formatters (``formatter``), template classes and tokenizer
fixes (``template``), its 121 registrations (``registry``) and tool formats (``tool_utils``)."""

from __future__ import annotations

from fastsft.data.chat.registry import TEMPLATE_NAMES, get_template, list_templates
from fastsft.data.chat.template import SpecialTokens, Template, fix_tokenizer

__all__ = ["TEMPLATE_NAMES", "SpecialTokens", "Template", "fix_tokenizer", "get_template", "list_templates"]
