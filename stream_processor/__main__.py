"""``python -m stream_processor``: one worker, configured by LLM_USAGE_* variables."""

from stream_processor.worker import run

if __name__ == "__main__":
    run()
