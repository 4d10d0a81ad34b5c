package dispatchpg

// KeysSQL is the query of CallKeys, for the test of its plan.
const KeysSQL = keysSQL
