package sqssink

import (
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"testing"

	"fanout/sink"
)

func md5hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}

func errorsAs(err error, target any) bool { return err != nil && errors.As(err, target) }

func mustParse(t *testing.T, k *sink.Kind, cfg string) sink.Config {
	t.Helper()
	c, err := k.Parse(json.RawMessage(cfg))
	if err != nil {
		t.Fatal(err)
	}
	return c
}
