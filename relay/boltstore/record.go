package boltstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"time"

	"github.com/hookrelay/hookrelay/relay"
)

// record is what the deliveries and dead buckets hold: a delivery's state. Its message, body
// included, is stored once in the messages bucket (docs/DESIGN.md section 2.3), so claims, retries
// and settles rewrite about a hundred bytes whatever the body's size.
type record struct {
	relay.Delivery
	// ClaimedAt is when the current lease was taken. Open makes a leased delivery due from then:
	// it was due at that moment, whatever clock the caller uses.
	ClaimedAt time.Time
	// DeliveredAt is set when history keeps an acknowledged delivery: it is then no longer live.
	DeliveredAt time.Time
	// legacy marks a record of the first layout, which carried its whole message: the next write
	// stores the message in the messages bucket (see putRecord).
	legacy bool
}

// Record layouts: version 1 (earlier releases) carried the message; version 2 names it by ID;
// version 3 adds the delivered time (history).
// Message layouts: version 1 had no headers; version 2 ends with the forwarded headers.
const (
	recordV1       = 1
	recordV2       = 2
	recordVersion  = 3
	messageV1      = 1
	messageVersion = 2
)

// The encodings are a version byte then the fields in a fixed order: varints for numbers,
// length-prefixed bytes for strings and the body, seconds and nanoseconds for times: cheaper than
// JSON, which would also base64 the body (docs/BENCHMARKS.md).
func encodeRecord(r *record) []byte {
	e := encoder{b: make([]byte, 0, 96+len(r.ID)+len(r.LastError))}
	// A record that is not delivered keeps the version 2 layout, so that with history off the file
	// stays readable by the release before history.
	if r.DeliveredAt.IsZero() {
		e.b = append(e.b, recordV2)
	} else {
		e.b = append(e.b, recordVersion)
	}
	e.state(r)
	e.str(r.Message.ID)
	if !r.DeliveredAt.IsZero() {
		e.time(r.DeliveredAt)
	}
	return e.b
}

func (e *encoder) state(r *record) {
	e.str(r.ID)
	e.str(r.Target)
	e.int(int64(r.Attempt))
	e.time(r.DueAt)
	e.str(r.Lease)
	e.int(int64(r.LastStatus))
	e.str(r.LastError)
	e.time(r.DeadAt)
	e.time(r.ClaimedAt)
}

func encodeMessage(m *relay.Message) []byte {
	e := encoder{b: make([]byte, 0, 96+len(m.ID)+len(m.JobID)+len(m.Body)+16*len(m.Targets))}
	e.b = append(e.b, messageVersion)
	e.message(m)
	e.headers(m.Headers)
	return e.b
}

func (e *encoder) headers(h http.Header) {
	e.uint(uint64(len(h)))
	for _, name := range slices.Sorted(maps.Keys(h)) {
		e.str(name)
		e.uint(uint64(len(h[name])))
		for _, v := range h[name] {
			e.str(v)
		}
	}
}

func (d *decoder) headers() http.Header {
	n := d.uint()
	if n == 0 || n > uint64(len(d.b)) { // each header takes at least two bytes
		if n != 0 {
			d.fail()
		}
		return nil
	}
	h := make(http.Header, n)
	for range n {
		name := d.str()
		k := d.uint()
		if k > uint64(len(d.b)) {
			d.fail()
			return nil
		}
		v := make([]string, k)
		for i := range v {
			v[i] = d.str()
		}
		h[name] = v
	}
	return h
}

func (e *encoder) message(m *relay.Message) {
	e.str(m.ID)
	e.str(m.Route)
	e.str(m.Provider)
	e.str(m.JobID)
	e.str(m.JobStatus)
	e.str(m.ContentType)
	e.str(m.SourceAddr)
	e.time(m.ReceivedAt)
	e.bytes(m.Body)
	e.uint(uint64(len(m.Targets)))
	for _, t := range m.Targets {
		e.str(t)
	}
}

// decodeRecord copies everything out of b: bbolt's memory is only valid inside the transaction.
// A version 2 record comes back with only Message.ID set; getRecord fills in the message.
func decodeRecord(b []byte) (*record, error) {
	if len(b) == 0 || b[0] < recordV1 || b[0] > recordVersion {
		return nil, errors.New("decode record: unknown version")
	}
	d := decoder{b: b[1:]}
	r := &record{}
	r.ID = d.str()
	r.Target = d.str()
	r.Attempt = int(d.int())
	r.DueAt = d.time()
	r.Lease = d.str()
	r.LastStatus = int(d.int())
	r.LastError = d.str()
	r.DeadAt = d.time()
	r.ClaimedAt = d.time()
	if b[0] == recordV1 {
		r.legacy = true
		d.message(&r.Message)
	} else {
		r.Message.ID = d.str()
	}
	if b[0] >= recordVersion {
		r.DeliveredAt = d.time()
	}
	if err := d.end(); err != nil {
		return nil, fmt.Errorf("decode record: %w", err)
	}
	return r, nil
}

// encodeAttempt and decodeAttempt are the attempts bucket's values: a version byte, then the fields.
func encodeAttempt(a *relay.Attempt) []byte {
	e := encoder{b: make([]byte, 0, 32+len(a.Error)+len(a.Response))}
	e.b = append(e.b, 1)
	e.int(int64(a.Number))
	e.time(a.Start)
	e.int(int64(a.Duration))
	e.int(int64(a.Status))
	e.str(a.Error)
	e.bytes(a.Response[:min(len(a.Response), relay.MaxAttemptResponse)])
	return e.b
}

func decodeAttempt(b []byte) (relay.Attempt, error) {
	var a relay.Attempt
	if len(b) == 0 || b[0] != 1 {
		return a, errors.New("decode attempt: unknown version")
	}
	d := decoder{b: b[1:]}
	a.Number = int(d.int())
	a.Start = d.time()
	a.Duration = time.Duration(d.int())
	a.Status = int(d.int())
	a.Error = d.str()
	a.Response = bytes.Clone(d.raw())
	if err := d.end(); err != nil {
		return a, fmt.Errorf("decode attempt: %w", err)
	}
	return a, nil
}

// decodeMessage decodes what encodeMessage wrote, copying out of b.
func decodeMessage(b []byte) (relay.Message, error) {
	var m relay.Message
	if len(b) == 0 || (b[0] != messageVersion && b[0] != messageV1) {
		return m, errors.New("decode message: unknown version")
	}
	d := decoder{b: b[1:]}
	d.message(&m)
	if b[0] == messageVersion {
		m.Headers = d.headers()
	}
	if err := d.end(); err != nil {
		return m, fmt.Errorf("decode message: %w", err)
	}
	return m, nil
}

func (d *decoder) message(m *relay.Message) {
	m.ID = d.str()
	m.Route = d.str()
	m.Provider = d.str()
	m.JobID = d.str()
	m.JobStatus = d.str()
	m.ContentType = d.str()
	m.SourceAddr = d.str()
	m.ReceivedAt = d.time()
	m.Body = bytes.Clone(d.raw())
	if n := d.uint(); n <= uint64(len(d.b)) { // each target takes at least one byte
		m.Targets = make([]string, n)
		for i := range m.Targets {
			m.Targets[i] = d.str()
		}
	} else {
		d.fail()
	}
}

// end reports a decoding error, or bytes left over.
func (d *decoder) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail()
	}
	return d.err
}

type encoder struct{ b []byte }

func (e *encoder) uint(v uint64)  { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) int(v int64)    { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) str(s string)   { e.uint(uint64(len(s))); e.b = append(e.b, s...) }
func (e *encoder) bytes(p []byte) { e.uint(uint64(len(p))); e.b = append(e.b, p...) }

// time keeps the instant (the zero time included), not the location: callers compare with Equal.
func (e *encoder) time(t time.Time) { e.int(t.Unix()); e.uint(uint64(t.Nanosecond())) }

// decoder reads what encoder wrote; after the first error every read returns a zero value.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errors.New("truncated or corrupt")
	}
	d.b = nil
}

func (d *decoder) uint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) int() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

// raw returns the next length-prefixed field, aliasing d.b.
func (d *decoder) raw() []byte {
	n := d.uint()
	if n > uint64(len(d.b)) {
		d.fail()
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) str() string { return string(d.raw()) }

func (d *decoder) time() time.Time {
	sec := d.int()
	nsec := d.uint()
	if nsec >= 1e9 {
		d.fail()
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec)).UTC()
}

// timeKey encodes t so that byte order is time order: big-endian nanoseconds with the sign bit
// flipped, which also orders times before 1970 correctly.
func timeKey(t time.Time) []byte { return indexKey(t, "") }

// indexKey is timeKey(t) followed by id: the key of the due, dead and dedupe-expiry indexes.
func indexKey(t time.Time, id string) []byte {
	return append(binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(id)), uint64(t.UnixNano())^(1<<63)), id...)
}

// keyTime decodes the time at the start of an index key.
func keyTime(k []byte) time.Time {
	return time.Unix(0, int64(binary.BigEndian.Uint64(k[:8])^(1<<63))).UTC()
}
