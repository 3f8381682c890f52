# Python 2.7: Autobahn TestSuite's wstest, with every finished case appended to the
# JSON-lines file $CASELOG as it ends (wstest itself writes its reports only at the
# very end, so a run cut short by its time bound would otherwise report nothing).
# $ABT_SITE: the site-packages directory wstest was installed into (pip --prefix).
# Used by tests/autobahn/grid.py; see tests/autobahn/README.md.
import json
import os
import site
import sys

if os.environ.get("ABT_SITE"):
    site.addsitedir(os.environ["ABT_SITE"])

import txaio

txaio.use_twisted()

from autobahntestsuite import fuzzing  # noqa: E402

_log_case = fuzzing.FuzzingFactory.logCase


def log_case(self, results):
    with open(os.environ["CASELOG"], "a") as out:
        out.write(
            json.dumps(
                {
                    "agent": results["agent"],
                    "id": results["id"],
                    "behavior": results["behavior"],
                    "behaviorClose": results["behaviorClose"],
                    "duration": results.get("duration"),
                }
            )
            + "\n"
        )
    return _log_case(self, results)


fuzzing.FuzzingFactory.logCase = log_case

from autobahntestsuite.wstest import run  # noqa: E402

sys.argv[0] = "wstest"
run()
