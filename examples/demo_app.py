"""The default workload of `make demo`: a small CLI-style program that uses
several stdlib packages, and real installed packages where present."""
import argparse
import asyncio
import email.message
import http.client
import json
import logging
import urllib.request
import xml.etree.ElementTree as ET

parser = argparse.ArgumentParser()
parser.add_argument("--name", default="pycds")
args = parser.parse_args([])

msg = email.message.EmailMessage()
msg["Subject"] = "hello from %s" % args.name
tree = ET.fromstring("<a><b>1</b><b>2</b></a>")
logging.getLogger("demo").debug("quiet")


async def main():
    await asyncio.sleep(0)
    return sum(int(b.text) for b in tree.iter("b"))

extra = []
for name in ("boto3", "flask", "jsonschema"):
    try:
        __import__(name)
        extra.append(name)
    except ImportError:
        pass
print(json.dumps({"subject": msg["Subject"], "sum": asyncio.run(main()),
                  "status": http.client.responses[200], "packages": extra}))
