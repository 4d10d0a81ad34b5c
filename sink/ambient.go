package sink

// Ambient credentials are those of the environment fanout runs in: the AWS
// chain (environment variables, shared files, the instance role through the
// metadata service) or Google's application default credentials. They are
// fanout's own cloud identity, so a destination may act with them only when
// the operator turned them on (--allow-ambient-aws, --allow-ambient-google)
// and only for destinations the operator creates: a tenant's destination
// must never publish, write or read with fanout's identity. A cloud kind
// is built for one Ambient (its NewKind); its Parse refuses a config that
// asks for ambient credentials the Ambient does not allow, naming the flag,
// and the API layer refuses such a config from a tenant (AmbientFlag).

// Ambient is what the operator allows destinations to take from fanout's
// environment.
type Ambient struct {
	// AWS lets a config with "ambient_credentials": true use the default
	// AWS credential chain (--allow-ambient-aws).
	AWS bool
	// Google lets a config with "ambient_credentials": true use Google's
	// application default credentials (--allow-ambient-google).
	Google bool
}

// The flags that turn ambient credentials on, as errors name them.
const (
	FlagAmbientAWS    = "--allow-ambient-aws"
	FlagAmbientGoogle = "--allow-ambient-google"
)

// AmbientConfig is a Config that can ask for ambient credentials.
type AmbientConfig interface {
	Config
	// AmbientFlag is the flag that allows the credentials the config asks
	// for, "" when it brings its own.
	AmbientFlag() string
}

// AmbientFlag is the flag that allows the ambient credentials c asks for,
// "" when it asks for none: the API layer refuses a config for which it is
// not "" from anyone but the operator.
func AmbientFlag(c Config) string {
	if a, ok := c.(AmbientConfig); ok {
		return a.AmbientFlag()
	}
	return ""
}
