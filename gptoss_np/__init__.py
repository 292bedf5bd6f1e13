"""gptoss_np: a from-scratch inference engine for OpenAI's gpt-oss models.

    import gptoss_np
    model = gptoss_np.load("path/to/gpt-oss-20b")        # a Hugging Face checkpoint folder
    logits = model.logits([200006, 1428, 200008])          # float32 [T, vocab_size]
    new_ids = list(model.generate(prompt_ids, max_new_tokens=32))
"""

from .config import ConfigError, GptOssConfig
from .checkpoint import CheckpointError
from .generate import PromptCache
from .chat import Chat
from .model import GptOss, load

__all__ = ["load", "GptOss", "GptOssConfig", "ConfigError", "CheckpointError", "PromptCache", "Chat"]
__version__ = "0.1.0"
