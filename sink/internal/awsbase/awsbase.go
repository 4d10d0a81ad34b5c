// Package awsbase is what the AWS kinds (SQS, SNS, EventBridge, S3) share:
// the credential and endpoint fields of their configs, an SDK configuration
// whose every connection goes through the SSRF guard, and the
// classification of the SDK's errors.
//
// A config brings its own credentials (an access key, optionally a session
// token), or asks for the ambient chain with "ambient_credentials": true,
// which only a kind built with sink.Ambient.AWS accepts. The SDK
// configuration is built by hand rather than by config.LoadDefaultConfig, so
// that nothing of fanout's environment (AWS_ACCESS_KEY_ID, AWS_PROFILE,
// AWS_ENDPOINT_URL, shared files) reaches a destination that brings its own
// credentials.
package awsbase

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"

	"fanout/dispatch"
	"fanout/sink"
	"fanout/webhook"
)

// Secrets are the config fields that hold a credential: masked as signing
// secrets are. The access key id is not secret to AWS, but it names the
// account and the user, and with the session token it is all a request
// carries in clear.
var Secrets = []string{"access_key_id", "secret_access_key", "session_token"}

// URLs are the config fields that say where requests go: a change of them
// that keeps a masked credential is refused (sink.Kind.Unmask), or an
// editor could point the destination at a server of theirs and receive the
// access key id and session token of each request.
var URLs = []string{"endpoint_url", "region"}

// Auth is the part of an AWS kind's config that says where and as whom.
type Auth struct {
	// Region is the AWS region ("eu-west-1"). Required.
	Region string `json:"region"`
	// EndpointURL replaces the service's AWS endpoint: a VPC endpoint,
	// LocalStack, moto ("http://127.0.0.1:5000"). Optional.
	EndpointURL string `json:"endpoint_url,omitempty"`
	// AccessKeyID, SecretAccessKey and SessionToken are the credentials
	// requests are signed with; SessionToken only for temporary ones.
	AccessKeyID     string `json:"access_key_id,omitempty"`
	SecretAccessKey string `json:"secret_access_key,omitempty"`
	SessionToken    string `json:"session_token,omitempty"`
	// AmbientCredentials signs with fanout's own credential chain instead
	// (environment, shared files, instance or task role): only where the
	// operator allows it (--allow-ambient-aws), for their own
	// destinations.
	AmbientCredentials bool `json:"ambient_credentials,omitempty"`

	allowAmbient bool
}

var regionRE = regexp.MustCompile(`^[a-z]{2}(-[a-z0-9]+)+-[0-9]+$`)

// Validate checks the fields; amb is what the kind was built to allow.
func (a *Auth) Validate(amb sink.Ambient) error {
	a.allowAmbient = amb.AWS
	if a.Region == "" {
		return sink.Errorf("region", "required: the AWS region, e.g. us-east-1")
	}
	if !regionRE.MatchString(a.Region) {
		return sink.Errorf("region", "%q is not an AWS region name (e.g. eu-west-1)", a.Region)
	}
	if a.EndpointURL != "" {
		u, err := url.Parse(a.EndpointURL)
		switch {
		case err != nil:
			return sink.Errorf("endpoint_url", "does not parse")
		case u.Scheme != "https" && u.Scheme != "http":
			return sink.Errorf("endpoint_url", "%s: want https:// (or http://)", sink.RedactURL(a.EndpointURL))
		case u.Host == "" || u.Hostname() == "":
			return sink.Errorf("endpoint_url", "%s: no host", sink.RedactURL(a.EndpointURL))
		case u.User != nil:
			return sink.Errorf("endpoint_url", "has user info: put credentials in access_key_id and secret_access_key")
		case u.RawQuery != "" || u.Fragment != "":
			return sink.Errorf("endpoint_url", "%s: an endpoint has no query or fragment", sink.RedactURL(a.EndpointURL))
		}
	}
	if a.AmbientCredentials {
		if a.AccessKeyID != "" || a.SecretAccessKey != "" || a.SessionToken != "" {
			return sink.Errorf("ambient_credentials", "set either ambient_credentials or access_key_id and secret_access_key, not both")
		}
		if !amb.AWS {
			return sink.Errorf("ambient_credentials", "fanout's own AWS credentials are not available to destinations: the operator allows them for their own destinations with %s", sink.FlagAmbientAWS)
		}
		return nil
	}
	switch {
	case a.AccessKeyID == "":
		return sink.Errorf("access_key_id", "required: the destination's own AWS credentials (access_key_id and secret_access_key)")
	case a.SecretAccessKey == "":
		return sink.Errorf("secret_access_key", "required with access_key_id")
	case strings.ContainsAny(a.AccessKeyID+a.SecretAccessKey+a.SessionToken, " \t\r\n"):
		return sink.Errorf("access_key_id", "credentials have no white space")
	}
	return nil
}

// AmbientFlag is sink.FlagAmbientAWS when the config uses fanout's own
// credentials.
func (a *Auth) AmbientFlag() string {
	if a.AmbientCredentials {
		return sink.FlagAmbientAWS
	}
	return ""
}

// SecretValues are the credentials, for sink.Redact.
func (a *Auth) SecretValues() []string {
	return []string{a.AccessKeyID, a.SecretAccessKey, a.SessionToken}
}

// Where is the endpoint or the region, for Target.
func (a *Auth) Where() string {
	if a.EndpointURL != "" {
		return sink.RedactURL(a.EndpointURL)
	}
	return a.Region
}

// Transport is an HTTP transport that dials through the SSRF guard and
// through nothing else: no proxy from the environment (a proxy would make
// the guard check the proxy's address rather than the endpoint's).
func Transport(env sink.Env) *http.Transport {
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           env.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   env.ConnectTimeout(),
		ExpectContinueTimeout: time.Second,
	}
}

// noRedirect keeps the SDK from following a redirect: AWS answers one only
// for a wrong region or bucket, which is an error to report, not a place
// to send credentials to.
func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// Load returns the SDK configuration of a, whose HTTP client dials through
// env.Dial, and a function that closes its idle connections. The SDK does
// not retry: the dispatch runtime does, with its backoff, breaker and
// budget, and an SDK retry inside an attempt would hide throttling from
// them.
func (a *Auth) Load(ctx context.Context, env sink.Env) (aws.Config, func(), error) {
	tr := Transport(env)
	cfg := aws.Config{
		Region:     a.Region,
		HTTPClient: &http.Client{Transport: tr, CheckRedirect: noRedirect},
		Retryer:    func() aws.Retryer { return aws.NopRetryer{} },
		Logger:     logging.Nop{},
		AppID:      "fanout",
	}
	if a.EndpointURL != "" {
		cfg.BaseEndpoint = aws.String(strings.TrimRight(a.EndpointURL, "/"))
	}
	if a.AmbientCredentials {
		// Checked again here: a config stored while the operator allowed
		// ambient credentials does not use them after they stopped.
		if !a.allowAmbient {
			return aws.Config{}, nil, sink.Fail(fmt.Errorf("ambient AWS credentials are off (%s): the destination cannot sign its requests", sink.FlagAmbientAWS))
		}
		// The chain's own requests (the instance metadata service, STS,
		// SSO) are fanout's, to its own environment: they do not go
		// through the guard, which refuses the metadata address.
		amb, err := config.LoadDefaultConfig(ctx, config.WithRegion(a.Region))
		if err != nil {
			return aws.Config{}, nil, sink.Fail(fmt.Errorf("loading the ambient AWS credentials: %w", err))
		}
		cfg.Credentials = amb.Credentials
	} else {
		cfg.Credentials = aws.NewCredentialsCache(credentials.NewStaticCredentialsProvider(a.AccessKeyID, a.SecretAccessKey, a.SessionToken))
	}
	return cfg, tr.CloseIdleConnections, nil
}

// Codes of errors that retrying with the same request cannot mend: the
// credentials themselves are wrong (only an edit of the destination mends
// them, and an edit makes a new sender), or the request is (too large, an
// attribute AWS refuses).
var permanentCodes = map[string]bool{
	"InvalidClientTokenId":                        true,
	"UnrecognizedClientException":                 true,
	"SignatureDoesNotMatch":                       true,
	"InvalidAccessKeyId":                          true,
	"IncompleteSignature":                         true,
	"MissingAuthenticationToken":                  true,
	"InvalidSignatureException":                   true,
	"AuthFailure":                                 true,
	"InvalidToken":                                true,
	"ExpiredToken":                                true,
	"ExpiredTokenException":                       true,
	"TokenRefreshRequired":                        true,
	"InvalidParameterValue":                       true,
	"InvalidParameter":                            true,
	"InvalidParameterException":                   true,
	"ValidationException":                         true,
	"ValidationError":                             true,
	"InvalidMessageContents":                      true,
	"MessageTooLong":                              true,
	"InvalidAttributeName":                        true,
	"InvalidAttributeValue":                       true,
	"EntityTooLarge":                              true,
	"KeyTooLongError":                             true,
	"InvalidArgument":                             true,
	"InvalidBucketName":                           true,
	"MalformedDetail":                             true,
	"PermanentRedirect":                           true,
	"AuthorizationHeaderMalformed":                true,
	"InvalidRequest":                              true,
	"MissingParameter":                            true,
	"UnsupportedOperation":                        true,
	"InvalidAction":                               true,
	"InvalidSecurity":                             true,
	"AWS.SimpleQueueService.UnsupportedOperation": true,
	"NotAuthorizedForSourceException":             true,
	"InvalidEventPatternException":                true,
}

// Codes retried whatever their HTTP status: AWS says "later" (throttling,
// its own failures), or the account may change without an edit of the
// destination: a queue, topic, bus or bucket created or re-created (SQS
// makes one wait a minute to re-create a deleted queue), a policy granted
// (IAM takes seconds to apply one), a KMS key enabled. Such failures open
// the destination's breaker instead of dead-lettering every event at once,
// and the retry budget ends them if nothing changes.
var retryCodes = map[string]bool{
	"Throttling":                                  true,
	"ThrottlingException":                         true,
	"ThrottledException":                          true,
	"RequestThrottled":                            true,
	"RequestThrottledException":                   true,
	"TooManyRequestsException":                    true,
	"RequestLimitExceeded":                        true,
	"SlowDown":                                    true,
	"ProvisionedThroughputExceededException":      true,
	"LimitExceededException":                      true,
	"KMSThrottlingException":                      true,
	"KMSThrottling":                               true,
	"ServiceUnavailable":                          true,
	"InternalError":                               true,
	"InternalFailure":                             true,
	"InternalException":                           true,
	"InternalErrorException":                      true,
	"RequestTimeout":                              true,
	"RequestTimeoutException":                     true,
	"AWS.SimpleQueueService.NonExistentQueue":     true,
	"QueueDoesNotExist":                           true,
	"NotFound":                                    true,
	"NotFoundException":                           true,
	"ResourceNotFoundException":                   true,
	"NoSuchBucket":                                true,
	"AccessDenied":                                true,
	"AccessDeniedException":                       true,
	"AuthorizationError":                          true,
	"AuthorizationErrorException":                 true,
	"KMSDisabled":                                 true,
	"KMSDisabledException":                        true,
	"KMSNotFound":                                 true,
	"KMSNotFoundException":                        true,
	"KMSInvalidState":                             true,
	"KMSInvalidStateException":                    true,
	"KMSAccessDenied":                             true,
	"KMSAccessDeniedException":                    true,
	"KmsException":                                true,
	"EndpointDisabled":                            true,
	"ConcurrentModificationException":             true,
	"OperationAborted":                            true,
	"AWS.SimpleQueueService.QueueDeletedRecently": true,
}

// Classify makes an SDK error a sink error, redacting secrets: permanent
// for a blocked address, refused credentials and refused requests
// (permanentCodes, and any other 4xx whose code says nothing else);
// retryable for throttling, 5xx, the codes of retryCodes, timeouts and
// network failures. ambient is whether the credentials come from the chain,
// which renews an expired token by itself: then an expired token is
// retried.
func Classify(err error, ambient bool, secrets ...string) error {
	if err == nil {
		return nil
	}
	var blocked *webhook.BlockedError
	if errors.As(err, &blocked) {
		return sink.Fail(err, secrets...)
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		code := api.ErrorCode()
		switch {
		case ambient && strings.HasPrefix(code, "ExpiredToken"):
			return sink.Retry(err, secrets...)
		case retryCodes[code]:
			return sink.Retry(err, secrets...)
		case permanentCodes[code]:
			return sink.Fail(err, secrets...)
		}
	}
	var resp *awshttp.ResponseError
	if errors.As(err, &resp) {
		switch s := resp.HTTPStatusCode(); {
		case s >= 500, s == http.StatusTooManyRequests, s == http.StatusRequestTimeout:
			return sink.Retry(err, secrets...)
		case s >= 400:
			return sink.Fail(err, secrets...)
		}
	}
	if api != nil && api.ErrorFault() == smithy.FaultServer {
		return sink.Retry(err, secrets...)
	}
	if st := dispatch.ErrorStatus(err); st.Retryable() {
		return sink.Redact(err, secrets...) // a timeout stays a timeout
	}
	// What is left is the transport's: a connection refused or reset, a
	// TLS failure, an answer that does not parse. Retried.
	return sink.Retry(err, secrets...)
}

// ClassifyCode classifies a failure that AWS reported by its code alone,
// as a batch API reports each entry's (EventBridge's PutEvents): permanent
// for the codes of permanentCodes, retryable for any other (a code AWS
// adds later is retried, and the retry budget ends it).
func ClassifyCode(err error, code string, secrets ...string) error {
	if permanentCodes[code] && !retryCodes[code] {
		return sink.Fail(err, secrets...)
	}
	return sink.Retry(err, secrets...)
}

// StringValue is *s, or "" when s is nil.
func StringValue(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// MaxAttributes is how many message attributes SQS takes (and SNS, for a
// raw delivery to SQS).
const MaxAttributes = 10

// Attribute is one message attribute.
type Attribute struct{ Name, Value string }

// Attributes are the message attributes of m: fanout's (delivery and event
// id, type, tenant, key and content type, those that are set), then the
// destination's headers in name order. An attribute name AWS refuses, or
// more than MaxAttributes, is a permanent error naming why: every message
// of the destination would be refused alike.
func Attributes(m *sink.Message) ([]Attribute, error) {
	out := make([]Attribute, 0, 6+len(m.Headers))
	add := func(k, v string) {
		if v != "" {
			out = append(out, Attribute{k, v})
		}
	}
	add(sink.HeaderDeliveryID, m.DeliveryID)
	add(sink.HeaderEventID, m.EventID)
	add(sink.HeaderEventType, m.Type)
	add(sink.HeaderTenant, m.Tenant)
	add(sink.HeaderKey, m.Key)
	add("content-type", m.ContentType)
	names := make([]string, 0, len(m.Headers))
	for k := range m.Headers {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		if err := checkAttributeName(k); err != nil {
			return nil, fmt.Errorf("%w: header %q cannot be a message attribute: %v", dispatch.ErrPermanent, k, err)
		}
		add(k, m.Headers[k])
	}
	if len(out) > MaxAttributes {
		return nil, fmt.Errorf("%w: the message has %d attributes (fanout's %d and the destination's headers), AWS takes at most %d: remove headers",
			dispatch.ErrPermanent, len(out), len(out)-len(m.Headers), MaxAttributes)
	}
	return out, nil
}

// checkAttributeName applies SQS's rules for attribute names, which SNS
// follows for deliveries to SQS.
func checkAttributeName(k string) error {
	lower := strings.ToLower(k)
	switch {
	case k == "" || len(k) > 256:
		return errors.New("a name has 1 to 256 characters")
	case strings.HasPrefix(lower, "aws.") || strings.HasPrefix(lower, "amazon."):
		return errors.New("names starting with AWS. or Amazon. are AWS's")
	case strings.HasPrefix(k, ".") || strings.HasSuffix(k, ".") || strings.Contains(k, ".."):
		return errors.New("a name neither starts nor ends with a period, nor has two in a row")
	}
	for _, r := range k {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("%q is not a letter, digit, hyphen, underscore or period", r)
		}
	}
	return nil
}

// GroupID is the FIFO message group of key: key itself when SQS takes it
// (at most 128 characters of printable ASCII), else its SHA-256 in hex, so
// that every key maps to one group and one group only; fallback when key
// is "".
func GroupID(key, fallback string) string {
	if key == "" {
		return fallback
	}
	if len(key) <= 128 && printableASCII(key) {
		return key
	}
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// DedupID is the FIFO deduplication id of a delivery: its id when SQS
// takes it as one, else its SHA-256 in hex.
func DedupID(deliveryID string) string { return GroupID(deliveryID, "") }

// CheckGroup validates a configured fixed message group.
func CheckGroup(field, g string) error {
	if g != "" && (len(g) > 128 || !printableASCII(g)) {
		return sink.Errorf(field, "at most 128 characters of printable ASCII, no spaces")
	}
	return nil
}

// CheckText refuses, for good, a body that service (SQS, SNS) cannot
// carry as a message: empty, not UTF-8, or with characters outside XML's
// (SQS's rule for message bodies, which SNS applies to deliveries to SQS).
func CheckText(service string, b []byte) error {
	if len(b) == 0 {
		return fmt.Errorf("%w: %s takes no empty message: the event's body is empty", dispatch.ErrPermanent, service)
	}
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n <= 1 {
			return fmt.Errorf("%w: %s takes text only: the event's body is not UTF-8 (byte %d)", dispatch.ErrPermanent, service, i)
		}
		if !(r == '\t' || r == '\n' || r == '\r' || r >= 0x20 && r <= 0xD7FF || r >= 0xE000 && r <= 0xFFFD || r >= 0x10000) {
			return fmt.Errorf("%w: %s refuses the character %U at byte %d of the event's body", dispatch.ErrPermanent, service, r, i)
		}
		i += n
	}
	return nil
}
