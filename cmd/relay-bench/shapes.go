package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hookrelay/hookrelay/filters"
	"github.com/hookrelay/hookrelay/relay"
)

// sentField carries the time a webhook was first sent (unix nanoseconds) inside its body, so the
// target can measure end-to-end latency. Providers add fields over time; the presets ignore it.
const sentField = `"bench_sent_ns":`

// shape is one route of the bench's relay config: a provider's payload and its verification.
// Bodies follow the examples in the providers' webhook documentation (../shared/seeds and
// filters/testdata).
type shape struct {
	route  string
	preset *filters.Preset
	body   func(id string, sent int64) string
	// request builds the POST for base, adding the route's credentials for this attempt.
	request func(k *kit, base string, j *job, now time.Time) (*http.Request, error)
}

// job is one webhook: a provider's result for one job. Resending it is a provider's retry.
type job struct {
	shape *shape
	id    string
	key   string // route, job ID and normalised status: the relay's dedupe key
	body  []byte
}

func newShapes() ([]*shape, error) {
	post := func(url string, body []byte) (*http.Request, error) {
		req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(string(body)))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Content-Type", "application/json")
		return req, nil
	}
	shapes := []*shape{
		{route: "fashn", body: func(id string, sent int64) string {
			return fmt.Sprintf(`{"id":"%s","status":"completed","output":["https://cdn.staging.fashn.ai/%[1]s/output_0.png"],"error":null,%s%d}`, id, sentField, sent)
		}, request: func(k *kit, base string, j *job, _ time.Time) (*http.Request, error) {
			return post(base+"/hooks/fashn/"+k.token, j.body)
		}},
		{route: "fal", body: func(id string, sent int64) string {
			return fmt.Sprintf(`{"request_id":"%s","gateway_request_id":"%[1]s","status":"OK","payload":{"images":[{"url":"https://url.to/image.png",`+
				`"content_type":"image/png","file_name":"image.png","file_size":1824075,"width":1024,"height":1024}],"seed":196619188014358660},"error":null,%s%d}`, id, sentField, sent)
		}, request: func(k *kit, base string, j *job, now time.Time) (*http.Request, error) {
			req, err := post(base+"/hooks/fal", j.body)
			if err != nil {
				return nil, err
			}
			ts := strconv.FormatInt(now.Unix(), 10)
			sum := sha256.Sum256(j.body)
			msg := j.id + "\nbench-user\n" + ts + "\n" + hex.EncodeToString(sum[:])
			req.Header.Set(filters.FalHeaderRequestID, j.id)
			req.Header.Set(filters.FalHeaderUserID, "bench-user")
			req.Header.Set(filters.FalHeaderTimestamp, ts)
			req.Header.Set(filters.FalHeaderSignature, hex.EncodeToString(ed25519.Sign(k.falKey, []byte(msg))))
			return req, nil
		}},
		{route: "fotor", body: func(id string, sent int64) string {
			var b strings.Builder
			fmt.Fprintf(&b, `{"taskId":"%s","status":1,"businessId":"75f15294e55540e198bb19cc0a068fd2","type":"avatar","resultUrl":"","avatarResult":[`, id)
			for i, tmpl := range []string{"d691196a-6daa-4bf9-a011-5422d95ce03f", "74d8ef37-4864-480b-927a-dde52e429609", "7292c5b5-ecb0-4868-b4a4-849c73cc302c"} {
				if i > 0 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, `{"templateId":"%s","images":[{"id":"%s%d","url":"https://static.fotor.com.cn/aigc/business/75f15294e55540e198bb19cc0a068fd2/avatar/20241126/%[2]s%[3]d.jpg","hasHsfw":false}]}`, tmpl, id, i)
			}
			fmt.Fprintf(&b, `],%s%d}`, sentField, sent)
			return b.String()
		}, request: func(_ *kit, base string, j *job, _ time.Time) (*http.Request, error) {
			return post(base+"/hooks/fotor", j.body) // checked by source address only
		}},
		{route: "abstrakt", body: func(id string, sent int64) string {
			return fmt.Sprintf(`{"job_id":"job_%s","status":"succeeded","output":{"type":"image","items":[{"type":"image","url":"https://cdn.abstrakt.one/outputs/%[1]s.png"}]},`+
				`"credits_used":1,"completed_at":"2026-02-08T10:30:45Z",%s%d}`, id, sentField, sent)
		}, request: func(k *kit, base string, j *job, _ time.Time) (*http.Request, error) {
			return post(base+"/hooks/abstrakt?token="+k.token, j.body)
		}},
		{route: "replicate", body: func(id string, sent int64) string {
			return fmt.Sprintf(`{"id":"%s","model":"black-forest-labs/flux-schnell","status":"succeeded","input":{"prompt":"a red bicycle leaning on a wall"},`+
				`"output":["https://replicate.delivery/xezq/%[1]s/out-0.webp"],"error":null,"logs":"","metrics":{"predict_time":1.42},`+
				`"created_at":"2026-02-08T10:30:41Z","completed_at":"2026-02-08T10:30:45Z",%s%d}`, id, sentField, sent)
		}, request: func(k *kit, base string, j *job, now time.Time) (*http.Request, error) {
			req, err := post(base+"/hooks/replicate", j.body)
			if err != nil {
				return nil, err
			}
			// The message ID stays the same across a provider's retries.
			msgID, ts := "msg_"+j.id, now.Unix()
			req.Header.Set("Webhook-Id", msgID)
			req.Header.Set("Webhook-Timestamp", strconv.FormatInt(ts, 10))
			req.Header.Set("Webhook-Signature", relay.SignStandardWebhook(k.whKey, msgID, ts, j.body))
			return req, nil
		}},
	}
	for _, s := range shapes {
		name := s.route
		var g *filters.Generic
		if name == "replicate" {
			name, g = "generic", &filters.Generic{JobIDPath: "id", StatusPath: "status"}
		}
		p, err := filters.NewPreset(name, g)
		if err != nil {
			return nil, err
		}
		s.preset = p
	}
	return shapes, nil
}

// newJob makes webhook number seq of a run; nonce keeps runs against one store apart.
func newJob(shapes []*shape, nonce string, seq int64, sent time.Time) (*job, error) {
	s := shapes[seq%int64(len(shapes))]
	var id string
	switch s.route {
	case "fal": // a UUID, as fal's request IDs are
		id = fmt.Sprintf("%s-%04x-4afd-883e-%012x", nonce, seq>>48&0xffff, seq&0xffffffffffff)
	case "fotor": // 32 hex digits
		id = fmt.Sprintf("%s%024x", nonce, seq)
	default:
		id = fmt.Sprintf("%s-%d-u1", nonce, seq)
	}
	body := []byte(s.body(id, sent.UnixNano()))
	k, err := dedupeKey(s, body)
	if err != nil {
		return nil, err
	}
	return &job{shape: s, id: id, key: k, body: body}, nil
}

// dedupeKey reads a body as the relay does and returns route, job ID and status.
func dedupeKey(s *shape, body []byte) (string, error) {
	j, err := s.preset.Extract(body)
	if err != nil {
		return "", fmt.Errorf("%s body: %w", s.route, err)
	}
	return s.route + "\x00" + j.ID + "\x00" + j.Status, nil
}

// sentAt reads the send time embedded in a body.
func sentAt(body []byte) (time.Time, bool) {
	i := bytes.LastIndex(body, []byte(sentField))
	if i < 0 {
		return time.Time{}, false
	}
	rest := body[i+len(sentField):]
	end := 0
	for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
		end++
	}
	ns, err := strconv.ParseInt(string(rest[:end]), 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(0, ns), true
}
