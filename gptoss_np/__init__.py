"""gptoss_np: a from-scratch inference engine for OpenAI's gpt-oss models."""
