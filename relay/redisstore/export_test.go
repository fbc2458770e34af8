package redisstore

// SlotOf lets the external tests check keys against the store's own slot function.
var SlotOf = slotOf
