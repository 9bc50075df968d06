"""
Photos from arrival to the clinic's folder: names, types, multipart uploads, checks, durable storage, the held folder. Plain Python.
"""
