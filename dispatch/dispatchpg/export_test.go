package dispatchpg

// KeysSQL is the query of CallKeys, for the test of its plan.
const KeysSQL = keysSQL

// The queries of CallLeaseRelease, for the test of their plans.
var (
	ReleaseExpiredSQL = releaseExpiredSQL
	ReleaseOwnerSQL   = releaseOwnerSQL
	ExpiredPlansSQL   = expiredPlansSQL
	OwnedPlansSQL     = ownedPlansSQL
)
