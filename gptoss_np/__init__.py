"""gptoss_np: a from-scratch inference engine for OpenAI's gpt-oss models.

    import gptoss_np
    model = gptoss_np.load("path/to/gpt-oss-20b")        # a Hugging Face checkpoint folder
    # or gptoss_np.load(gptoss_np.embedded.default_checkpoint()): the embedded tiny model (random weights)
    logits = model.logits([200006, 1428, 200008])          # float32 [T, vocab_size]
    new_ids = list(model.generate(prompt_ids, max_new_tokens=32))
"""

from . import cpu_threads

cpu_threads.load_numpy_with_short_blas_spin()  # first: NumPy's OpenBLAS reads its threads' spin as it loads

from .config import ConfigError, GptOssConfig  # noqa: E402
from .checkpoint import CheckpointError  # noqa: E402
from .backend import DeviceUnavailableError  # noqa: E402
from .generate import PromptCache  # noqa: E402
from .chat import Chat  # noqa: E402
from .model import GptOss, load  # noqa: E402
from . import embedded  # noqa: E402

__all__ = ["load", "GptOss", "GptOssConfig", "ConfigError", "CheckpointError", "DeviceUnavailableError",
           "PromptCache", "Chat", "embedded"]
__version__ = "0.1.0"
