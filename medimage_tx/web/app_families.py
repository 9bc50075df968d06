"""
Which MedImage app sent an upload, told by its multipart boundary, and how
each one reads an answer (from the apps' code; docs/protocol.md has the
table).  Plain Python.

- Legacy Android (cordova-plugin-file-transfer, boundary exactly
  C{+++++}): a status of 400 or more is taken as "The photo was uploaded."
  and the photo is deleted; a 2xx other than 200 whose body does not
  contain "200" is retried after 15 s, 45 s, 135 s.  So it must never get
  a status of 400 or more for a photo we did not store.
- Legacy iOS (CDVFileTransfer, boundary C{+++++org.apache.cordova.formBoundary}):
  any non-2xx is retried.
- Everyone else, above all the browser app (jQuery FormData, boundary
  C{----WebKitFormBoundary...}): any 2xx is success and deletes the photo;
  C{503} reads as "invalid URL"; other errors show "An error has occurred: "
  and the reason phrase, keep the photo and resend it at the next start.
"""

from __future__ import annotations

import enum

from ..photos.multipart import boundary_of


class AppFamily(enum.Enum):
    LEGACY_ANDROID = "legacy Android"
    LEGACY_IOS = "legacy iOS"
    STANDARD = "browser app and others"


LEGACY_ANDROID_BOUNDARY = b"+++++"
LEGACY_IOS_BOUNDARY = b"+++++org.apache.cordova.formBoundary"


def app_family(content_type: bytes) -> AppFamily:
    """
    The family of the client that sent a body of this content type.
    """
    boundary = boundary_of(content_type)
    if boundary == LEGACY_ANDROID_BOUNDARY:
        return AppFamily.LEGACY_ANDROID
    if boundary == LEGACY_IOS_BOUNDARY:
        return AppFamily.LEGACY_IOS
    return AppFamily.STANDARD
