package aegis.decide

import rego.v1

# An operator bundle with a runtime error: division by zero on every proposal.
decision := {"outcome": "allow", "reason": "OK", "constraints": {"n": 1 / count([])}}
