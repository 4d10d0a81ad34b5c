package dispatchpg

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"fanout/dispatch"
)

var _ dispatch.Buckets = (*Store)(nil)

// bucketAvail is what a bucket holds at the take's time ($5), before it:
// what it held, plus what accrued at the rate ($3) since its last take, at
// most the burst ($4).
const bucketAvail = `LEAST($4::float8, b.tokens + GREATEST(0, $5::bigint - b.stamp)::float8 / 1e9 * $3::float8)`

// bucketTake is one statement, so one row lock: replicas taking from the
// same bucket at once are serialized by it, and each sees the row the
// other left (ON CONFLICT DO UPDATE re-reads the row it waited for).
const bucketTake = `INSERT INTO buckets AS b (key, tokens, stamp, taken)
	VALUES ($1, $4::float8 - LEAST($2::int, $4::int), $5, LEAST($2::int, $4::int))
	ON CONFLICT (key) DO UPDATE SET
		taken = LEAST($2::int, floor(` + bucketAvail + `))::int,
		tokens = ` + bucketAvail + ` - LEAST($2::int, floor(` + bucketAvail + `)),
		stamp = GREATEST(b.stamp, $5::bigint)
	RETURNING taken`

// BucketTake implements dispatch.Buckets: one upsert of the key's row. It
// commits on its own with synchronous commit, like every write outside the
// group commits: a take that the server lost in a crash would hand out its
// tokens again.
func (s *Store) BucketTake(ctx context.Context, p *dispatch.BucketTakeParams) (int, error) {
	if p.Want <= 0 {
		return 0, nil
	}
	var taken int
	err := s.write(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		return conn.QueryRow(ctx, bucketTake, p.Key, p.Want, p.Rate, max(p.Burst, 1), p.Now.UnixNano()).Scan(&taken)
	})
	if err != nil {
		return 0, fmt.Errorf("take tokens of %s: %w", p.Key, err)
	}
	return taken, nil
}
