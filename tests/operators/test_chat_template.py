"""Where a row's images go in its conversation: one rule for every prompt source (README, Prompts)."""

from llava_batch.operators.chat_template import count_images, place_images

IMAGE = {"type": "image"}


def text(value):
    return {"type": "text", "text": value}


def test_string_content_gets_the_rows_images_first_in_the_user_turn():
    placed = place_images([{"role": "user", "content": "What is in the image?"}], 1)
    assert placed == [{"role": "user", "content": [IMAGE, text("What is in the image?")]}]


def test_several_images_all_go_first():
    placed = place_images([{"role": "user", "content": "Name the shape in each image."}], 2)
    assert placed[0]["content"] == [IMAGE, IMAGE, text("Name the shape in each image.")]


def test_multi_turn_string_content_puts_the_images_in_the_first_user_turn_only():
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is it?"},
        {"role": "assistant", "content": "A circle."},
        {"role": "user", "content": "Which colour?"},
    ]
    placed = place_images(conversation, 2)
    assert [message["content"] for message in placed] == [
        [text("Be brief.")],
        [IMAGE, IMAGE, text("What is it?")],
        [text("A circle.")],
        [text("Which colour?")],
    ]
    assert [message["role"] for message in placed] == ["system", "user", "assistant", "user"]


def test_image_placeholders_in_string_or_text_items_place_the_images_there():
    conversation = [
        {"role": "user", "content": "Compare <image> with"},
        {"role": "assistant", "content": "With what?"},
        {"role": "user", "content": [text("this one: <image>")]},
    ]
    placed = place_images(conversation, 2)
    assert placed[0]["content"] == [text("Compare"), IMAGE, text("with")]
    assert placed[2]["content"] == [text("this one:"), IMAGE]
    assert count_images(placed) == 2


def test_a_conversation_that_places_images_is_left_as_placed_and_counted():
    conversation = [{"role": "user", "content": [IMAGE, text("What is it?")]}]
    assert place_images(conversation, 1) == conversation
    # Two images in the row, one placed: the count tells the mismatch (preprocess makes it an error row).
    assert count_images(place_images(conversation, 2)) == 1
    # Placeholders in an answer are the model's words, not images.
    answer = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<image>"}]
    assert count_images(place_images(answer, 0)) == 0
