"""A disk-backed activation store: shards of activations written resumably, read memory-mapped.

Write one with ``batch_get_activations(..., out=DIR)``, ``collect_activations(..., out=DIR)`` or
``mlxterp activations --out DIR``; read it with :class:`ActivationStore`.
"""

from .integrity import StoreIntegrityError
from .lock import StoreLockedError
from .manifest import StoreMismatchError
from .prompts import PromptFile
from .reader import ActivationStore

__all__ = ["ActivationStore", "PromptFile", "StoreIntegrityError", "StoreLockedError", "StoreMismatchError"]
