# A stub on purpose: twistd imports every plugin to list them, so this file
# imports nothing heavy, and the real wiring lives in medimage_tx.tap.
from twisted.application.service import ServiceMaker

medimage = ServiceMaker(
    "MedImage",
    "medimage_tx.tap",
    "A MedImage server: receives clinical photos from phones, or relays them.",
    "medimage",
)
