package dispatchsqlite

import (
	"context"
	"fmt"

	"fanout/dispatch"
)

var _ dispatch.Buckets = (*Store)(nil)

// bucketAvail is what a bucket holds at the take's time (?5), before it:
// what it held, plus what accrued at the rate (?3) since its last take, at
// most the burst (?4). It is never negative, so CAST truncates as floor.
const bucketAvail = `MIN(?4, b.tokens + MAX(0, ?5 - b.stamp) / 1e9 * ?3)`

const bucketTake = `INSERT INTO buckets AS b (key, tokens, stamp, taken)
	VALUES (?1, ?4 - MIN(?2, ?4), ?5, MIN(?2, ?4))
	ON CONFLICT (key) DO UPDATE SET
		taken = MIN(?2, CAST(` + bucketAvail + ` AS INTEGER)),
		tokens = ` + bucketAvail + ` - MIN(?2, CAST(` + bucketAvail + ` AS INTEGER)),
		stamp = MAX(b.stamp, ?5)
	RETURNING taken`

// BucketTake implements dispatch.Buckets: one upsert through the writer. It
// is a lazy commit, as a finish is: a power cut may lose the last takes
// (lazySyncWithin of them), whose tokens are then handed out again; a crash
// of the process alone loses nothing.
func (s *Store) BucketTake(ctx context.Context, p *dispatch.BucketTakeParams) (int, error) {
	if p.Want <= 0 {
		return 0, nil
	}
	var taken int64
	err := s.w.doLazy(ctx, false, func(tx *wtx) error {
		row, err := tx.queryRow(bucketTake, p.Key, p.Want, p.Rate, max(p.Burst, 1), p.Now.UnixNano())
		if err != nil {
			return err
		}
		var ok bool
		if taken, ok = row[0].(int64); !ok {
			return fmt.Errorf("taken is %T", row[0])
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("take tokens of %s: %w", p.Key, err)
	}
	return int(taken), nil
}
