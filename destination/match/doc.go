/*
Package match is fanout's payload filter language: which events a
destination wants, by the content of their JSON payload and by their
envelope (type, tenant, time). A filter is a JSON object in the style of
MongoDB queries, as Convoy, Outpost and Hookdeck use.

# Fields and paths

Each key of a filter is a field of the payload and its value the condition on
that field. Several keys must all hold (AND). An object value without
operators goes one level down, and a dotted key several levels at once, so
these two are the same filter:

	{"data": {"amount": {"$gte": 100}, "currency": "EUR"}}
	{"data.amount": {"$gte": 100}, "data.currency": "EUR"}

A plain value is an equality test:

	{"data.customer.id": "c_1"}

A path goes into an array by index when its segment is a number
("data.items.0.sku"), and otherwise into every object of the array, any of
them matching: {"data.items.sku": "a1"} matches {"data":{"items":[{"sku":"b2"},
{"sku":"a1"}]}}. A value that is an array matches a test if one of its
elements does ("array contains"): {"data.tags": "vip"} matches
{"data":{"tags":["vip","eu"]}}. A payload key that has a dot in it cannot be
addressed; neither can one that begins with $.

# Operators

	$eq          equal                   {"data.currency": {"$eq": "EUR"}}
	$neq         not equal               {"data.status": {"$neq": "test"}}
	$gt $gte     greater (or equal)      {"data.amount": {"$gte": 100}}
	$lt $lte     less (or equal)         {"data.amount": {"$lt": 500}}
	$in          equal to one of         {"data.status": {"$in": ["paid", "shipped"]}}
	$nin         equal to none of        {"data.status": {"$nin": ["cancelled", "refunded"]}}
	$exist       is there, or is not     {"data.deleted_at": {"$exist": false}}
	$regex       matches (RE2 syntax)    {"data.email": {"$regex": "@example\\.(com|org)$"}}
	$startsWith  string prefix           {"data.customer.id": {"$startsWith": "c_"}}
	$endsWith    string suffix           {"data.email": {"$endsWith": "@example.com"}}
	$and         all of a list           {"$and": [{"data.a": 1}, {"data.b": 2}]}
	$or          any of a list           {"$or": [{"data.status": "paid"}, {"data.amount": {"$gt": 1000}}]}
	$not         the opposite            {"$not": {"data.status": "test"}}

Several operators on one field must all hold:
{"data.amount": {"$gt": 100, "$lt": 500}}. $and, $or and $not may also be
used under a field, their conditions then being on that field:
{"data.status": {"$not": {"$in": ["cancelled", "refunded"]}}},
{"data.code": {"$or": [{"$lt": 200}, {"$gte": 500}]}}, and
{"data": {"$or": [{"status": "paid"}, {"amount": {"$gt": 0}}]}}.

The exact rules:

  - Types. $eq and $in compare with a string, a number, true, false or null;
    a value matches only one of the same JSON type: "150" is not 150, and
    null is not a missing field. $gt, $gte, $lt and $lte take a number or a
    string, and a value of another type never matches them. To compare whole
    objects or arrays, test their fields or elements.
  - Numbers are compared by their exact decimal value, not as float64:
    150, 150.0 and 1.5e2 are equal; 12345678901234567891 is greater than
    12345678901234567890; 0.1 is 0.1. (Exponents beyond ±2^50 are read as
    ±2^50.)
  - Strings are compared after JSON unescaping, byte by byte ($gt, $lt: the
    order of Unicode code points); there is no case folding.
  - Missing fields. A test on a missing field is false ($eq, $gt, $in,
    $regex...); so its negations are true: $neq, $nin, $not, and
    $exist: false match an event without the field. $exist: true matches a
    field that is there, null included.
  - Arrays. A test matches an array if it matches one of its elements (only
    one level: an array in an array is not searched). $neq, $nin and $not
    negate that: {"data.tags": {"$neq": "vip"}} matches when no tag is "vip".
    Several operators on one field each choose their element: [1, 10]
    matches {"$gt": 5, "$lt": 2}.
  - $regex is Go's RE2 syntax (https://golang.org/s/re2syntax), unanchored:
    use ^ and $. It runs in time linear in the string. Patterns are at most
    512 bytes.
  - A payload that is not JSON has no fields: every path is missing.
  - A payload with a key given twice: the first one counts.

# The envelope

Three reserved names at the top level of a filter (or in an $and, $or or
$not there) address the event's envelope rather than its payload:

	$type    the event's type          {"$type": {"$startsWith": "order."}}
	$tenant  the event's tenant        {"$tenant": {"$in": ["acme", "globex"]}}
	$time    when fanout received it   {"$time": {"$gte": "2025-01-01T00:00:00Z"}}

$type and $tenant are strings (an empty one is missing) and take every
operator. $time compares with times in RFC 3339 ("2025-01-01T00:00:00Z",
"2025-01-01T01:00:00.5+01:00"), as instants, with $eq, $neq, $gt, $gte, $lt,
$lte, $in, $nin and $exist.

# Limits

The empty filter {} matches every event. Compile refuses, with an *Error
that says where, a filter that is not a JSON object, an unknown operator, an
operand of the wrong kind, an empty object or list, a key given twice, and
a filter beyond the limits: MaxSize bytes (16 KiB), MaxDepth levels of
nesting (16), MaxConditions conditions (256), MaxPathSegments segments in a
path (32), MaxInList values in an $in or $nin (512), MaxRegex bytes in a
$regex (512). Evaluating a filter is then linear in the size of the payload
times its number of conditions.

# Use

	f, err := match.Compile(raw)  // err is an *match.Error: a 400
	ok := f.Match(payload, match.Envelope{Type: typ, Tenant: tenant, Time: received})
	ok, why := f.Explain(payload, env)  // why: ["data.amount: 50 is not >= 100"]

To match one event against many filters, read it once with NewEvent and
use MatchEvent. A *Filter is safe for concurrent use; its MarshalJSON gives
back the filter as it was given, compacted.
*/
package match
