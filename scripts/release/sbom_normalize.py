"""Makes a cargo-cyclonedx SBOM the same for the same commit: the serial number is derived from
the content instead of drawn at random, the timestamp is SOURCE_DATE_EPOCH's, and this machine's
paths are gone. Usage: sbom_normalize.py IN OUT."""

import datetime
import hashlib
import json
import os
import sys
import uuid

source, target = sys.argv[1], sys.argv[2]
with open(source, encoding="utf-8") as handle:
    bom = json.load(handle)

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
text = json.dumps(bom, sort_keys=True).replace(root, "/build/bkg")
bom = json.loads(text)
bom.pop("serialNumber", None)
epoch = int(os.environ["SOURCE_DATE_EPOCH"])
bom.setdefault("metadata", {})["timestamp"] = (
    datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
)
digest = hashlib.sha256(json.dumps(bom, sort_keys=True).encode()).digest()
bom["serialNumber"] = "urn:uuid:" + str(uuid.UUID(bytes=digest[:16], version=5))
with open(target, "w", encoding="utf-8") as handle:
    json.dump(bom, handle, indent=2, sort_keys=True)
    handle.write("\n")
