"""UA-3DTalk Gradio app (a Hugging Face Space runs ``python app.py``); the logic
lives in :mod:`ua3dtalk.webapp`."""
from ua3dtalk.webapp import build, launch

demo = build()

if __name__ == "__main__":
    launch(demo)
