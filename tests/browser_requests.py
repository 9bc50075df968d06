"""
A scripted HTTP client for tests that run inside a network namespace (a
device on the clinic LAN): standard library only, so it runs as
`python tests/browser_requests.py BASE_URL STEPS_JSON` in any namespace.

Each step is {"method", "path", "headers", "form"}; cookies are kept
between steps as a browser does, and "{csrf}" in a form value or header is
replaced by the last CSRF token seen in a page.  Prints one JSON list:
{"status", "headers" (lower-case names), "body"} per step.
"""

import http.client
import json
import re
import sys
from urllib.parse import urlencode, urlsplit


def main(base: str, steps: list) -> list:
    target = urlsplit(base)
    cookies: dict[str, str] = {}
    csrf = ""
    results = []
    for step in steps:
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=20)
        headers = {k: v.replace("{csrf}", csrf) for k, v in step.get("headers", {}).items()}
        if cookies:
            headers.setdefault("Cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()))
        body = None
        if step.get("form") is not None:
            body = urlencode({k: v.replace("{csrf}", csrf) for k, v in step["form"].items()})
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        connection.request(step["method"], step["path"], body=body, headers=headers)
        response = connection.getresponse()
        text = response.read().decode("utf-8", "replace")
        for value in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = value.partition("=")
            cookie_value = rest.split(";")[0]
            if "max-age=0" in value.lower():
                cookies.pop(name, None)
            else:
                cookies[name] = cookie_value
        found = re.search(r"name='csrf' value='([0-9a-f]+)'", text)
        if found:
            csrf = found.group(1)
        results.append({"status": response.status, "body": text,
                        "headers": {k.lower(): v for k, v in response.getheaders()}})
        connection.close()
    return results


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], json.loads(sys.argv[2]))))
