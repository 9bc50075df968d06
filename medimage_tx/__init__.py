"""
medimage_tx: a MedImage-compatible server that gets clinical photos from
doctors' phones into the right folder on the clinic's computer.
"""

__version__ = "0.1.0"
