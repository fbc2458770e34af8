package relay

import "testing"

// The published Standard Webhooks test vector (docs/DESIGN.md section 5).
func TestSignStandardWebhookVector(t *testing.T) {
	key, err := ParseSigningSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"test": 2432232314}`)
	got := SignStandardWebhook(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
	const want = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
	if got != want {
		t.Fatalf("signature = %s, want %s", got, want)
	}
	for _, tc := range []struct {
		name   string
		header string
		body   []byte
		ts     int64
		ok     bool
	}{
		{"exact", want, body, 1614265330, true},
		{"among others and unknown versions", "v2,abc v1,bm90IGl0 " + want, body, 1614265330, true},
		{"body changed", want, []byte(`{"test": 2432232315}`), 1614265330, false},
		{"timestamp changed", want, body, 1614265331, false},
		{"empty header", "", body, 1614265330, false},
		{"signature without version", want[3:], body, 1614265330, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if ok := VerifyStandardWebhook(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", tc.ts, tc.body, tc.header); ok != tc.ok {
				t.Fatalf("verify = %v, want %v", ok, tc.ok)
			}
		})
	}
}

func TestParseSigningSecret(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    string
		wantErr bool
	}{
		{"whsec_aGVsbG8=", "hello", false},
		{"raw-secret\n", "raw-secret", false},
		{"whsec_!!!", "", true},
		{"whsec_", "", true},
		{"  ", "", true},
	} {
		got, err := ParseSigningSecret(tc.in)
		if (err != nil) != tc.wantErr || string(got) != tc.want {
			t.Errorf("ParseSigningSecret(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}
