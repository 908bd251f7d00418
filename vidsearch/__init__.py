"""vidsearch: find one specific object in hours of video (DASR* regions + FAISS)."""

__version__ = "0.1.0"
