"""
The PC's own pages and their access rules (docs/security.md, "A web page
open in the clinic's browser"): L{access.Access} decides, L{access.AdminResource}
applies it to a page, L{sessions.SessionStore} keeps C{basicAuthent}
password sessions, L{login} signs in and out.
"""

from .access import Access, AdminResource, form_fields, set_admin_headers
from .sessions import PasswordNotSet, SessionStore, TooManyAttempts, WrongPassword

__all__ = ["Access", "AdminResource", "PasswordNotSet", "SessionStore", "TooManyAttempts",
           "WrongPassword", "form_fields", "set_admin_headers"]
