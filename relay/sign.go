package relay

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
)

// Standard Webhooks (https://www.standardwebhooks.com) signing, used on the way out so a private
// target can check that a request came from the relay.

// ParseSigningSecret decodes a Standard Webhooks secret: "whsec_" followed by base64. A value
// without the prefix is used as raw bytes, which some senders do.
func ParseSigningSecret(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, fmt.Errorf("empty signing secret")
	}
	rest, ok := strings.CutPrefix(s, "whsec_")
	if !ok {
		return []byte(s), nil
	}
	key, err := base64.StdEncoding.DecodeString(rest)
	if err != nil {
		return nil, fmt.Errorf("signing secret after whsec_ is not base64: %w", err)
	}
	if len(key) == 0 {
		return nil, fmt.Errorf("empty signing secret after whsec_")
	}
	return key, nil
}

// SignStandardWebhook returns the webhook-signature value "v1,<base64 HMAC-SHA256(id.ts.body)>".
func SignStandardWebhook(key []byte, id string, ts int64, body []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id))
	mac.Write([]byte{'.'})
	mac.Write(strconv.AppendInt(nil, ts, 10))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// VerifyStandardWebhook reports whether any space-separated v1 signature in header matches,
// comparing in constant time. Signatures of other versions are ignored.
func VerifyStandardWebhook(key []byte, id string, ts int64, body []byte, header string) bool {
	want := []byte(SignStandardWebhook(key, id, ts, body))
	for _, sig := range strings.Fields(header) {
		if hmac.Equal([]byte(sig), want) {
			return true
		}
	}
	return false
}
