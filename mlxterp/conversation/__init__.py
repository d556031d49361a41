"""Conversations: chat messages in a model's chat template, with turn positions, multi-turn generation on a
KV cache reused turn after turn, turn patching and turn attention."""

from .attention import TurnAttention
from .cache import ConversationCache
from .conversation import Conversation, Turn
from .patching import TurnPatching
from .template import ROLES, ChatTemplateError

__all__ = ["ROLES", "ChatTemplateError", "Conversation", "ConversationCache", "Turn", "TurnAttention",
           "TurnPatching"]
