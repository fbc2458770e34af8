package relay

// Job is what a provider preset reads out of a webhook body.
type Job struct {
	ID     string // the provider's job ID; empty when the payload has none
	Status string // normalised: succeeded, failed, processing, or the raw value
}

// Extractor reads the job ID and normalised status out of a webhook body. An error means the body
// is malformed (not JSON, or not the shape the provider sends) and is answered 400.
type Extractor interface {
	Extract(body []byte) (Job, error)
}
