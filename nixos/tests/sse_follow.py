"""Follow a hubbub SSE stream like a browser's EventSource: on any error or end
of stream, reconnect and send Last-Event-ID so the server replays what was
missed. Writes one JSON line per received message and a `#connected` line
per (re)connection to OUT.

usage: sse_follow.py URL CA_FILE OUT
"""

import json
import ssl
import sys
import time
import urllib.request


def follow(url: str, ca_file: str, out_path: str) -> None:
    context = ssl.create_default_context(cafile=ca_file)
    last_id = None
    with open(out_path, "a", buffering=1) as out:
        while True:
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            request = urllib.request.Request(url, headers=headers)
            try:
                with urllib.request.urlopen(request, context=context, timeout=60) as response:
                    out.write(f"#connected last_id={last_id}\n")
                    event_id = None
                    data = []
                    for raw in response:
                        line = raw.decode("utf-8").rstrip("\r\n")
                        if line == "":
                            if data:
                                message = json.loads("\n".join(data))
                                out.write(json.dumps({"event_id": event_id, "message": message}) + "\n")
                            if event_id is not None:
                                last_id = event_id
                            event_id, data = None, []
                        elif line.startswith(":"):
                            continue
                        elif line.startswith("id:"):
                            event_id = line[3:].strip()
                        elif line.startswith("data:"):
                            data.append(line[5:].lstrip(" "))
                out.write("#eof\n")
            except Exception as error:  # noqa: BLE001 - any failure means reconnect
                out.write(f"#error {type(error).__name__}: {error}\n")
            time.sleep(0.5)


if __name__ == "__main__":
    follow(sys.argv[1], sys.argv[2], sys.argv[3])
